"""Op specs: frozen dataclasses naming inputs, output and parameters, validated on construction.

Single-input ops take a feature name or a list of names and write in place unless `out=` names
the output(s). Multi-input ops (Cross, Intersect, Union, OverlapCount) take two names and `out=`.
Building an op touches no data; `Pipeline.fit` fills in the statistics of fitted ops.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np

from .._checks import is_integer, is_real
from ..errors import ConfigError
from ..schema import DENSE, SCORED, SPARSE

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
    "Op",
    "OverlapCount",
    "SortByScore",
    "Truncate",
    "Union",
    "op_from_dict",
]

ANY = (DENSE, SPARSE, SCORED)
LISTS = (SPARSE, SCORED)


def _names(value, what: str, op: str) -> tuple[str, ...]:
    try:
        names = (value,) if isinstance(value, str) else tuple(value) if value is not None else ()
    except TypeError:  # neither a name nor a list of them
        names = ()
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"{op}: {what} must be a feature name or a non-empty list of names, got {value!r}")
    return names


def _positive_int(value, what: str, op: str, minimum: int = 1) -> None:
    if not (is_integer(value) and minimum <= value < 2**63):
        raise ConfigError(f"{op}: {what}={value!r} must be an integer >= {minimum} (and an int64)")


def _real(value, what: str, op: str) -> None:
    """A real number of any type but bool (see `is_real`) that fits a float."""
    if not _float_number(value):
        raise ConfigError(f"{op}: {what}={value!r} must be a number (within a float's range)")


def _float_number(value) -> bool:
    """A real number of any type but bool (`is_real`) that a float holds."""
    if not is_real(value):
        return False
    try:
        float(value)
    except OverflowError:
        return False
    return True


def _float32(value: float, what: str, op: str) -> np.float32:
    """`value` as the float32 in which the executors apply it; a finite value must stay finite."""
    with np.errstate(over="ignore"):
        single = np.float32(value)
    if math.isfinite(value) and not np.isfinite(single):
        raise ConfigError(
            f"{op}: {what}={value!r} is beyond float32's range (+-{np.finfo(np.float32).max:.8g}), in which "
            "it is applied; give a value within it"
        )
    return single


def _flag(value, what: str, op: str) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{op}: {what}={value!r} must be True or False")


def _plain(value):
    """Numbers of any type (numpy's, Fraction; tuples of them) as Python's, so that ops check and
    save them alike. A number no float holds is left as it is, for the op's check to name."""
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, np.bool_):
        return bool(value)
    if is_integer(value):
        return int(value)
    if _float_number(value):
        return float(value)
    return value


@dataclass(frozen=True)
class Op:
    """Base of every op. `features` are the inputs; `out` the outputs (None: in place)."""

    features: tuple[str, ...]
    out: tuple[str, ...] | None = field(default=None, kw_only=True)

    accepts = ANY  # input kinds the op takes
    arity = 1  # inputs per application

    def __post_init__(self):
        name = type(self).__name__
        object.__setattr__(self, "features", _names(self.features, "features", name))
        if self.out is not None:
            object.__setattr__(self, "out", _names(self.out, "out", name))
        if self.arity == 2:
            if len(self.features) != 2:
                raise ConfigError(
                    f"{name} takes exactly two features, got {self.features}; name both: {name}('a', 'b', ..., out='ab')"
                )
            if self.out is None or len(self.out) != 1:
                raise ConfigError(f"{name}({self.features[0]!r}, {self.features[1]!r}) needs out='<name>'")
        elif self.out is not None and len(self.out) != len(self.features):
            raise ConfigError(
                f"{name}: out={self.out} must name one output per feature ({len(self.features)} features)"
            )
        else:
            twice = sorted({f for f in self.features if self.features.count(f) > 1})
            if twice:
                raise ConfigError(
                    f"{name}: features {twice} are listed more than once in {list(self.features)}, so the op "
                    "would apply to them again; list each feature once"
                )
        for f in fields(self):
            if f.name not in ("features", "out"):
                object.__setattr__(self, f.name, _plain(getattr(self, f.name)))
        self.validate()

    def validate(self) -> None:
        """Check parameters; raise ConfigError naming the op and the value."""

    def applications(self) -> list[tuple[tuple[str, ...], str]]:
        """[(inputs, output)] this op applies: one per feature, or one for a two-input op."""
        if self.arity == 2:
            return [(self.features, self.out[0])]
        outs = self.out or self.features
        return [((f,), o) for f, o in zip(self.features, outs)]

    def output_kind(self, kinds: tuple[str, ...]) -> str:
        return kinds[0]

    @property
    def fitted(self) -> bool:
        return True

    def to_dict(self) -> dict:
        data = asdict(self)
        data["features"] = list(self.features)
        data["out"] = list(self.out) if self.out else None
        return {"op": type(self).__name__, **{k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}}

    def __str__(self) -> str:
        params = ", ".join(
            f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.name not in ("features", "out")
        )
        out = f" -> {list(self.out)}" if self.out else ""
        return f"{type(self).__name__}({list(self.features)}{', ' + params if params else ''}){out}"


# -- dense ops: float in, float out ------------------------------------------------------------
@dataclass(frozen=True)
class FillMissing(Op):
    """Missing (NaN) -> value."""

    value: float = 0.0
    accepts = (DENSE,)

    def validate(self):
        _real(self.value, "value", "FillMissing")
        if math.isnan(self.value):
            raise ConfigError(f"FillMissing: value={self.value!r} must be a number (not NaN)")
        _float32(self.value, "value", "FillMissing")


@dataclass(frozen=True)
class Log1p(Op):
    """log(1 + max(x, 0)); NaN stays NaN."""

    accepts = (DENSE,)


@dataclass(frozen=True)
class Clamp(Op):
    """min(max(x, lo), hi); NaN stays NaN."""

    lo: float = -math.inf
    hi: float = math.inf
    accepts = (DENSE,)

    def validate(self):
        _real(self.lo, "lo", "Clamp")
        _real(self.hi, "hi", "Clamp")
        if math.isnan(self.lo) or math.isnan(self.hi) or self.lo > self.hi:
            raise ConfigError(f"Clamp: needs lo <= hi, got lo={self.lo!r}, hi={self.hi!r}")


@dataclass(frozen=True)
class Normalize(Op):
    """(x - mean) / std; std == 0 -> x - mean. mean and std are fitted when None."""

    mean: float | None = None
    std: float | None = None
    accepts = (DENSE,)

    def validate(self):
        if (self.mean is None) != (self.std is None):
            raise ConfigError("Normalize: give both mean and std, or neither (to fit them)")
        if self.mean is not None:
            _real(self.mean, "mean", "Normalize")
            _real(self.std, "std", "Normalize")
        if self.std is not None and not (self.std >= 0 and math.isfinite(self.std) and math.isfinite(self.mean)):
            raise ConfigError(f"Normalize: mean={self.mean!r} and std={self.std!r} must be finite, std >= 0")
        if self.mean is not None:
            _float32(self.mean, "mean", "Normalize")
            _float32(self.std, "std", "Normalize")
        if self.mean is not None and len(self.features) > 1:
            raise ConfigError("Normalize: explicit mean/std apply to one feature; use one op per feature")

    @property
    def fitted(self):
        return self.mean is not None


@dataclass(frozen=True)
class MinMax(Op):
    """(x - min) / (max - min); max == min -> 0. min and max are fitted when None."""

    min: float | None = None
    max: float | None = None
    accepts = (DENSE,)

    def validate(self):
        if (self.min is None) != (self.max is None):
            raise ConfigError("MinMax: give both min and max, or neither (to fit them)")
        if self.min is not None:
            _real(self.min, "min", "MinMax")
            _real(self.max, "max", "MinMax")
        if self.min is not None and not (math.isfinite(self.min) and math.isfinite(self.max) and self.min <= self.max):
            raise ConfigError(f"MinMax: needs finite min <= max, got min={self.min!r}, max={self.max!r}")
        if self.min is not None and len(self.features) > 1:
            raise ConfigError("MinMax: explicit min/max apply to one feature; use one op per feature")
        if self.min is not None:
            low, high = _float32(self.min, "min", "MinMax"), _float32(self.max, "max", "MinMax")
            with np.errstate(over="ignore"):
                overflows = not np.isfinite(high - low)
            if overflows:
                raise ConfigError(
                    f"MinMax({self.features[0]!r}): the range max - min of min={self.min!r}, max={self.max!r} "
                    f"overflows float32, in which it is applied; put gp.Clamp({self.features[0]!r}, lo, hi) "
                    f"or gp.Log1p({self.features[0]!r}) before it to narrow the values"
                )

    @property
    def fitted(self):
        return self.min is not None


# -- ops that make ids -------------------------------------------------------------------------
@dataclass(frozen=True)
class Bucketize(Op):
    """torch.bucketize(x, boundaries, right=right) as one id per row; NaN -> len(boundaries) + 1.

    Boundaries are float32, non-decreasing and non-empty. With boundaries=None and num_buckets=k,
    `Pipeline.fit` computes k-1 equal-frequency boundaries (see `Bucketize.fit`) and keeps k, which
    ties can leave above len(boundaries) + 1; num_buckets is never below it.
    """

    boundaries: tuple[float, ...] | None = None
    right: bool = False
    num_buckets: int | None = None
    accepts = (DENSE,)

    @classmethod
    def fit(cls, features, num_buckets: int, right: bool = False, out=None) -> Bucketize:
        """A Bucketize whose num_buckets - 1 boundaries are fitted as equal-frequency quantiles
        (fewer when ties leave fewer distinct values: see `gp.transforms.pipeline.equal_frequency`)."""
        return cls(features, None, right, num_buckets, out=out)

    def validate(self):
        _flag(self.right, "right", "Bucketize")
        if self.boundaries is None or self.num_buckets is not None:  # a fitted one keeps its num_buckets
            _positive_int(self.num_buckets, "num_buckets", "Bucketize", minimum=2)
        if self.boundaries is None:
            return
        try:
            b = tuple(self.boundaries)  # a string gives its characters, which are not numbers
        except TypeError:  # not a list at all
            b = None
        if b is None or not all(_float_number(x) for x in b):
            raise ConfigError(
                f"Bucketize: boundaries={self.boundaries!r} must be a list of numbers (within a float's range)"
            )
        b = tuple(float(x) for x in b)
        object.__setattr__(self, "boundaries", b)
        if not b:
            raise ConfigError("Bucketize: boundaries must be non-empty")
        if any(math.isnan(x) for x in b):
            raise ConfigError(f"Bucketize: boundaries hold NaN: {b}")
        bad = [i for i in range(1, len(b)) if b[i] < b[i - 1]]
        if bad:
            i = bad[0]
            raise ConfigError(
                f"Bucketize: boundaries must be non-decreasing; boundaries[{i - 1}]={b[i - 1]} > "
                f"boundaries[{i}]={b[i]}; sort them"
            )
        if self.num_buckets is not None and self.num_buckets < len(b) + 1:
            raise ConfigError(
                f"Bucketize: {len(b)} boundaries make {len(b) + 1} buckets, more than num_buckets={self.num_buckets}; "
                f"pass num_buckets={len(b) + 1} or leave it out"
            )

    def output_kind(self, kinds):
        return SPARSE

    @property
    def fitted(self):
        return self.boundaries is not None


@dataclass(frozen=True)
class Hash(Op):
    """TorchArrow's sigrid_hash of each id into [0, num_buckets); a dense input is cast first."""

    num_buckets: int = 0
    salt: int = 0

    def validate(self):
        _positive_int(self.num_buckets, "num_buckets", "Hash")
        _int64(self.salt, "salt", "Hash")

    def output_kind(self, kinds):
        return SCORED if kinds[0] == SCORED else SPARSE


@dataclass(frozen=True)
class Modulo(Op):
    """x mod n, floor-mod so the result is in [0, n) (the DLRM Criteo recipe)."""

    n: int = 0

    def validate(self):
        _positive_int(self.n, "n", "Modulo")

    def output_kind(self, kinds):
        return SCORED if kinds[0] == SCORED else SPARSE


# -- list ops ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Truncate(Op):
    """Keep the first (or last) max_len ids of each list (scores follow)."""

    max_len: int = 0
    keep: str = "first"
    accepts = LISTS

    def validate(self):
        _positive_int(self.max_len, "max_len", "Truncate", minimum=0)
        if self.keep not in ("first", "last"):
            raise ConfigError(f"Truncate: keep={self.keep!r} must be 'first' or 'last'")


@dataclass(frozen=True)
class SortByScore(Op):
    """Sort each list by score (stable; NaN scores last), then keep the top_k (None: all)."""

    descending: bool = True
    top_k: int | None = None
    accepts = (SCORED,)

    def validate(self):
        _flag(self.descending, "descending", "SortByScore")
        if self.top_k is not None:
            _positive_int(self.top_k, "top_k", "SortByScore", minimum=0)


@dataclass(frozen=True)
class NGram(Op):
    """Hashed windows of n consecutive ids: a list of length L gives max(L - n + 1, 0) ids."""

    n: int = 2
    num_buckets: int = 0
    salt: int = 0
    accepts = LISTS

    def validate(self):
        _positive_int(self.n, "n", "NGram")
        _positive_int(self.num_buckets, "num_buckets", "NGram")
        _int64(self.salt, "salt", "NGram")

    def output_kind(self, kinds):
        return SPARSE


# -- two-input ops -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Cross(Op):
    """Every (id_a, id_b) pair of a row, hash_128_to_64(id_a, id_b), then Hash(num_buckets, salt).

    A dense input counts as a list of one id (its value cast to int64; NaN -> empty).
    """

    num_buckets: int = 0
    salt: int = 0
    arity = 2

    def validate(self):
        _positive_int(self.num_buckets, "num_buckets", "Cross")
        _int64(self.salt, "salt", "Cross")

    def output_kind(self, kinds):
        return SPARSE

    def __init__(self, a, b=None, num_buckets: int = 0, salt: int = 0, *, out=None):
        object.__setattr__(self, "num_buckets", num_buckets)
        object.__setattr__(self, "salt", salt)
        object.__setattr__(self, "features", _pair(a, b))
        object.__setattr__(self, "out", out)
        self.__post_init__()


def _pair(a, b):
    """The inputs of a two-input op given as two names, or as one list of two (b left out)."""
    if not isinstance(a, str):
        return a
    return (a,) if b is None else (a, b)


@dataclass(frozen=True)
class _Pair(Op):
    arity = 2
    accepts = LISTS

    def __init__(self, a, b=None, *, out=None):
        object.__setattr__(self, "features", _pair(a, b))
        object.__setattr__(self, "out", out)
        self.__post_init__()

    def output_kind(self, kinds):
        return SPARSE


@dataclass(frozen=True, init=False)
class Intersect(_Pair):
    """The distinct ids of a that occur in b, in a's order of first occurrence."""


@dataclass(frozen=True, init=False)
class Union(_Pair):
    """The distinct ids of a, then those of b not in a, in order of first occurrence."""


@dataclass(frozen=True, init=False)
class OverlapCount(_Pair):
    """The number of ids of a (with repeats) that occur in b, as a dense feature."""

    def output_kind(self, kinds):
        return DENSE


OPS = {
    cls.__name__: cls
    for cls in (
        FillMissing,
        Log1p,
        Clamp,
        Normalize,
        MinMax,
        Bucketize,
        Hash,
        Modulo,
        Truncate,
        SortByScore,
        NGram,
        Cross,
        Intersect,
        Union,
        OverlapCount,
    )
}


def op_from_dict(data: dict) -> Op:
    """The op saved by `Op.to_dict`.

    Raises:
        ConfigError: `data` is not such a dict: no known "op", no "features", a parameter the op
            does not have, or a value the op refuses; the message names the op.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"a saved op must be a dict like Op.to_dict() gives, got {data!r}")
    data = dict(data)
    name = data.pop("op", None)
    if not isinstance(name, str) or name not in OPS:
        raise ConfigError(f"unknown op {name!r}; known: {sorted(OPS)}")
    cls = OPS[name]
    if "features" not in data:
        raise ConfigError(f"saved op {name} has no 'features'; save ops with Op.to_dict(), which writes them")
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"saved op {name} has unknown parameters {unknown}; {name} takes {known}")
    features, out = data.pop("features"), data.pop("out", None)
    if cls.arity == 2:
        if not (isinstance(features, list) and len(features) == 2):
            raise ConfigError(f"saved op {name}: features={features!r} must be a list of two feature names")
        return cls(*features, **data, out=out)
    for key, value in data.items():
        if isinstance(value, list):
            data[key] = tuple(value)
    return cls(features, **data, out=out)


def _int64(value, what: str, op: str) -> None:
    if not (is_integer(value) and -(2**63) <= value < 2**63):
        raise ConfigError(f"{op}: {what}={value!r} must be an int64")


def with_params(op: Op, **params) -> Op:
    """A copy of `op` with fitted parameters filled in."""
    return replace(op, **params)


def per_feature(op: Op) -> list[Op]:
    """`op` as one op per feature it applies to (a two-input op stays whole)."""
    if len(op.applications()) == 1:
        return [op]
    outs = op.out or op.features
    return [replace(op, features=(f,), out=None if op.out is None else (o,)) for f, o in zip(op.features, outs)]
