"""Last-mile transforms: op specs, fitting, the plan, the numpy oracle and the executors."""

from .ops import (
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
    Op,
    OverlapCount,
    SortByScore,
    Truncate,
    Union,
)
from .derived import materialize
from .images import NormalizeImage, RandomFlip, RandomResizedCrop, Resize
from .pipeline import Pipeline, output_schema
from .plan import Plan, compile

__all__ = [
    "Bucketize",
    "Clamp",
    "Cross",
    "FillMissing",
    "Hash",
    "Intersect",
    "Log1p",
    "MinMax",
    "Modulo",
    "NGram",
    "Normalize",
    "NormalizeImage",
    "Op",
    "OverlapCount",
    "Pipeline",
    "Plan",
    "RandomFlip",
    "RandomResizedCrop",
    "Resize",
    "SortByScore",
    "Truncate",
    "Union",
    "compile",
    "materialize",
    "output_schema",
]
