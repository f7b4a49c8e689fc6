"""`JsonFile`: save and load for the objects that define to_json / from_json."""

from __future__ import annotations

from .errors import DataError, GpupreError


class JsonFile:
    """Adds `save(path)` and `cls.load(path)` to a class with `to_json()` and `from_json(text)`."""

    def save(self, path) -> None:
        with open(path, "w") as f:
            f.write(self.to_json())

    @classmethod
    def load(cls, path):
        """The object saved at `path`.

        Raises:
            DataError: the file cannot be read, or does not hold what `save` writes.
        """
        name = cls.__name__
        try:
            with open(path) as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"cannot read the {name} file {str(path)!r}: {e}; check the path") from e
        try:
            return cls.from_json(text)
        except GpupreError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as e:  # a JSONDecodeError is a ValueError
            raise DataError(
                f"{str(path)!r} does not hold a saved {name} ({type(e).__name__}: {e}); "
                f"load only files that {name}.save wrote"
            ) from e
