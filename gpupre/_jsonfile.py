"""`JsonFile`: save and load for the objects that define to_json / from_json."""

from __future__ import annotations

import os
import tempfile

from ._checks import ensure_path
from .errors import ConfigError, DataError, GpupreError, describe


def ensure_output_path(path, what: str) -> None:
    """A ConfigError unless `path` can be a file to write: its directory exists, takes files, and
    it is no directory."""
    path = os.path.abspath(ensure_path(path, f"{what} path", "a str or os.PathLike, such as 'pipeline.json'"))
    directory = os.path.dirname(path)
    if os.path.isdir(path):
        raise ConfigError(f"the {what} path {path} is a directory; pass the path of a file in it")
    if not os.path.isdir(directory):
        raise ConfigError(
            f"the {what} path {path}: its directory {directory} does not exist; create it or write elsewhere"
        )
    try:  # a file made and removed at once: permissions alone do not tell (root, read-only mounts, /proc)
        tempfile.TemporaryFile(dir=directory).close()
    except OSError as e:
        raise ConfigError(
            f"the {what} path {path}: its directory {directory} takes no new files ({e}); write elsewhere"
        ) from e


class JsonFile:
    """Adds `save(path)`, `cls.load(path)` and a checked `cls.from_json(text)` to a class with
    `to_json()` and `_from_json(text)`."""

    def save(self, path) -> None:
        """Write the object's JSON to `path` (`load` reads it back).

        Raises:
            ConfigError: `path` is a directory, or its directory does not exist.
        """
        ensure_output_path(path, type(self).__name__)
        text = self.to_json()  # before the file is touched: a failure leaves it as it was
        with open(f"{path}.tmp", "w") as f:
            f.write(text)
        os.replace(f"{path}.tmp", path)

    @classmethod
    def from_json(cls, text: str):
        """The object whose `to_json()` is `text`.

        Raises:
            DataError: `text` does not hold what `to_json` writes.
        """
        return _parsed(cls, text, "the text")

    @classmethod
    def load(cls, path):
        """The object saved at `path`.

        Raises:
            DataError: the file cannot be read, or does not hold what `save` writes.
            ConfigError: `path` is no path.
        """
        ensure_path(path, f"{cls.__name__} path", "a str or os.PathLike, such as 'pipeline.json'")
        try:
            with open(path) as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"cannot read the {cls.__name__} file {str(path)!r}: {e}; check the path") from e
        return _parsed(cls, text, repr(str(path)))


def _parsed(cls, text: str, where: str):
    """`cls._from_json(text)`; any failure, a value the class refuses included (an op's parameter),
    is a DataError naming `where`, as `save` never writes such a text."""
    name = cls.__name__
    try:
        return cls._from_json(text)
    except (GpupreError, ValueError, KeyError, TypeError, AttributeError) as e:  # a JSONDecodeError is a ValueError
        raise DataError(
            f"{where} does not hold a saved {name} ({describe(e)}); load only what {name}.save "
            "(or to_json) wrote"
        ) from e
