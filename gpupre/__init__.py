"""gpupre: GPU-centric preprocessing and tensor ingestion for recommendation-model training."""

from . import distributed, reader, serving, storage, transforms
from .batch import Batch, KeyedJagged
from .loader import DataLoader
from .errors import BackendUnavailable, ConfigError, DataError, GpupreError, KernelError, SchemaError
from .reader import Dataset, WorkUnit
from .schema import Feature, Schema
from .transforms import (
    Bucketize,
    Clamp,
    Cross,
    FillMissing,
    Hash,
    Intersect,
    Log1p,
    MinMax,
    Modulo,
    NGram,
    Normalize,
    NormalizeImage,
    OverlapCount,
    Pipeline,
    Plan,
    RandomFlip,
    RandomResizedCrop,
    Resize,
    SortByScore,
    Truncate,
    Union,
    compile,
    materialize,
)

__version__ = "0.1.0"


def __getattr__(name):
    if name == "audit":  # imports torch: only when used
        import importlib

        return importlib.import_module(".audit", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BackendUnavailable",
    "Batch",
    "Bucketize",
    "Clamp",
    "ConfigError",
    "Cross",
    "DataError",
    "DataLoader",
    "Dataset",
    "Feature",
    "FillMissing",
    "GpupreError",
    "Hash",
    "Intersect",
    "KernelError",
    "KeyedJagged",
    "Log1p",
    "MinMax",
    "Modulo",
    "NGram",
    "Normalize",
    "NormalizeImage",
    "OverlapCount",
    "Pipeline",
    "Plan",
    "RandomFlip",
    "RandomResizedCrop",
    "Resize",
    "Schema",
    "SchemaError",
    "SortByScore",
    "Truncate",
    "Union",
    "WorkUnit",
    "audit",
    "compile",
    "distributed",
    "materialize",
    "reader",
    "serving",
    "storage",
    "transforms",
]
