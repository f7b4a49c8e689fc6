"""Scale-out: the loader's reader tier on Ray."""

from .ray_readers import RayReaders

__all__ = ["RayReaders"]
