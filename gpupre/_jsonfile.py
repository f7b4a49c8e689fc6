"""`JsonFile`: save and load for the objects that define to_json / from_json."""

from __future__ import annotations


class JsonFile:
    """Adds `save(path)` and `cls.load(path)` to a class with `to_json()` and `from_json(text)`."""

    def save(self, path) -> None:
        with open(path, "w") as f:
            f.write(self.to_json())

    @classmethod
    def load(cls, path):
        with open(path) as f:
            return cls.from_json(f.read())
