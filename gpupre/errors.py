"""The exception hierarchy: every error a user can cause is a `GpupreError`."""

__all__ = [
    "BackendUnavailable",
    "ConfigError",
    "DataError",
    "GpupreError",
    "KernelError",
    "SchemaError",
]


class GpupreError(Exception):
    """Base class of every error gpupre raises on bad input or configuration."""


class SchemaError(GpupreError):
    """A feature is unknown, has the wrong kind or type, or files disagree on the schema."""


class DataError(GpupreError):
    """The data itself is bad: unreadable file, empty row group, malformed value."""


class ConfigError(GpupreError):
    """An argument or op parameter is invalid."""


class BackendUnavailable(GpupreError):
    """An executor or optional dependency was asked for but is not installed or has no device."""


class KernelError(GpupreError):
    """A kernel reported an error code (an id out of range, a corrupt offset)."""
