"""Reading flattened datasets: work units, projection, deterministic shares."""

from .dataset import Dataset
from .units import WorkUnit, shard

__all__ = ["Dataset", "WorkUnit", "shard"]
