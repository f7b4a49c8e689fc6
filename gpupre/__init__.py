"""gpupre: GPU-centric preprocessing and tensor ingestion for recommendation-model training."""

from . import reader, storage
from .batch import Batch, KeyedJagged
from .errors import BackendUnavailable, ConfigError, DataError, GpupreError, KernelError, SchemaError
from .reader import Dataset, WorkUnit
from .schema import Feature, Schema

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailable",
    "Batch",
    "ConfigError",
    "DataError",
    "Dataset",
    "Feature",
    "GpupreError",
    "KernelError",
    "KeyedJagged",
    "Schema",
    "SchemaError",
    "WorkUnit",
    "reader",
    "storage",
]
