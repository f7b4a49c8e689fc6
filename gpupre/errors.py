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
    """The data itself is bad: unreadable file, malformed value."""


class ConfigError(GpupreError):
    """An argument or op parameter is invalid."""


class BackendUnavailable(GpupreError):
    """An executor or optional dependency was asked for but is not installed or has no device."""


class KernelError(GpupreError):
    """A kernel reported an error code (an id out of range, a corrupt offset)."""


def describe(e: BaseException) -> str:
    """An exception in words: a gpupre error's own message, any other's type and message."""
    return str(e) if isinstance(e, GpupreError) else f"{type(e).__name__}: {e}"


class RemoteTraceback(Exception):
    """The traceback of an error in another process, chained to the error raised here."""

    def __str__(self) -> str:
        return "\n" + self.args[0]
