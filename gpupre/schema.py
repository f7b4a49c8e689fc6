"""Feature kinds and the `Schema` of a flattened dataset.

On disk every feature is its own Parquet column ("feature flattening"):

    dense   float32              one value per row, null = missing
    sparse  list<int64>          a list of ids per row, may be empty
    scored  list<int64>          ids, plus a sibling column `<name>.score`
            list<float32>        with one score per id
    image   binary               an encoded JPEG or PNG per row (a content feature)

The schema travels in the Parquet key-value metadata under `gpupre.schema`, so kinds and groups
survive a round trip. Plain Parquet written by anyone else is read by inference: a floating-point
column is a dense feature, an integer column a sparse feature with one id per row, a list<integer>
column a sparse feature, a binary column an image feature, a column named `label` the label.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from functools import cached_property

import pyarrow as pa

from .errors import SchemaError

__all__ = ["DENSE", "GROUPS", "IMAGE", "KINDS", "SCORED", "SPARSE", "Feature", "Schema"]

DENSE, SPARSE, SCORED, IMAGE = "dense", "sparse", "scored", "image"
KINDS = (DENSE, SPARSE, SCORED, IMAGE)
GROUPS = ("user", "item", "context")
REQUEST_GROUPS = ("user", "context")  # de-dup tables store these once per request
SCORE_SUFFIX = ".score"
METADATA_KEY = b"gpupre.schema"
DEDUP_METADATA_KEY = b"gpupre.dedup"  # de-dup tables: per-impression extras, impressions per row group
DEFAULT_LABEL = "label"


@dataclass(frozen=True)
class Feature:
    """One feature: its column name, its kind and the group it belongs to (for de-duplication).

    `derived` is set on a feature stored by `gp.materialize`: its provenance, the canonical
    JSON of the chain of fitted ops that made it from stored features. A pipeline compiled for a
    schema holding it reads the column instead of running that chain.
    """

    name: str
    kind: str
    group: str | None = None
    derived: str | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise SchemaError(f"feature name must be a non-empty string, got {self.name!r}")
        if self.name.endswith(SCORE_SUFFIX):
            raise SchemaError(
                f"feature name {self.name!r} ends in {SCORE_SUFFIX!r}, which is reserved for the "
                "score column of a scored feature; rename the feature"
            )
        if self.kind not in KINDS:
            raise SchemaError(f"feature {self.name!r}: kind {self.kind!r} is not one of {KINDS}")
        if self.group is not None and self.group not in GROUPS:
            raise SchemaError(f"feature {self.name!r}: group {self.group!r} is not one of {GROUPS}")
        if self.derived is not None and (not isinstance(self.derived, str) or not self.derived):
            raise SchemaError(
                f"feature {self.name!r}: derived={self.derived!r} must be None or a non-empty string"
            )

    @property
    def columns(self) -> tuple[str, ...]:
        """The Parquet columns that hold this feature."""
        return (self.name, self.name + SCORE_SUFFIX) if self.kind == SCORED else (self.name,)

    def arrow_fields(self) -> list[pa.Field]:
        if self.kind == DENSE:
            return [pa.field(self.name, pa.float32())]
        if self.kind == IMAGE:
            return [pa.field(self.name, pa.binary())]
        fields = [pa.field(self.name, pa.list_(pa.int64()))]
        if self.kind == SCORED:
            fields.append(pa.field(self.name + SCORE_SUFFIX, pa.list_(pa.float32())))
        return fields


@dataclass(frozen=True)
class Schema:
    """The features of a dataset, in column order, plus its label and pass-through columns.

    `labels` are float columns delivered as `Batch.labels`; `extras` are columns of any type
    delivered untouched in `Batch.extras` (row ids, timestamps, request ids).
    """

    features: tuple[Feature, ...]
    labels: tuple[str, ...] = ()
    extras: tuple[str, ...] = ()
    _by_name: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "features", tuple(self.features))
        object.__setattr__(self, "labels", tuple(self.labels))
        object.__setattr__(self, "extras", tuple(self.extras))
        by_name = {}
        for column in self.column_names():
            if column in by_name:
                raise SchemaError(f"column {column!r} appears twice in the schema; names must be unique")
            by_name[column] = True
        object.__setattr__(self, "_by_name", {f.name: f for f in self.features})

    # -- lookups ------------------------------------------------------------------------------
    # cached: the schema is frozen, and these sit on every batch's path
    @cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @cached_property
    def dense(self) -> tuple[Feature, ...]:
        return tuple(f for f in self.features if f.kind == DENSE)

    @cached_property
    def sparse(self) -> tuple[Feature, ...]:
        """Sparse and scored features: the keys of the KeyedJaggedTensor, in column order."""
        return tuple(f for f in self.features if f.kind in (SPARSE, SCORED))

    @cached_property
    def images(self) -> tuple[Feature, ...]:
        return tuple(f for f in self.features if f.kind == IMAGE)

    def __len__(self) -> int:
        return len(self.features)

    def __iter__(self):
        return iter(self.features)

    def __contains__(self, name) -> bool:
        return name in self._by_name

    def __getitem__(self, name: str) -> Feature:
        try:
            return self._by_name[name]
        except KeyError:
            raise SchemaError(unknown_message("feature", name, self.names)) from None

    def column_names(self) -> list[str]:
        """Every Parquet column this schema reads: features (with score columns), labels, extras."""
        columns = [c for f in self.features for c in f.columns]
        return columns + list(self.labels) + list(self.extras)

    # -- projection ---------------------------------------------------------------------------
    def select(self, names) -> Schema:
        """The projection onto `names` (kept in the order given); labels and extras are kept."""
        names = [names] if isinstance(names, str) else list(names)
        missing = [n for n in names if n not in self._by_name]
        if missing:
            raise SchemaError(unknown_message("projected feature", missing[0], self.names))
        return Schema(tuple(self._by_name[n] for n in names), self.labels, self.extras)

    # -- Arrow and JSON -----------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(
            {
                "features": [_feature_entry(f) for f in self.features],
                "labels": list(self.labels),
                "extras": list(self.extras),
            }
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Schema:
        data = json.loads(text)
        features = tuple(Feature(*entry) for entry in data["features"])
        return cls(features, tuple(data.get("labels", ())), tuple(data.get("extras", ())))

    def to_arrow(self, extra_types: dict | None = None) -> pa.Schema:
        """The Arrow schema of the flattened layout, with this schema in its metadata."""
        extra_types = extra_types or {}
        fields = [fld for f in self.features for fld in f.arrow_fields()]
        fields += [pa.field(name, pa.float32()) for name in self.labels]
        fields += [pa.field(name, extra_types.get(name, pa.int64())) for name in self.extras]
        return pa.schema(fields, metadata={METADATA_KEY: self.to_json().encode()})

    @classmethod
    def from_arrow(
        cls, arrow_schema: pa.Schema, source: str = "<table>", columns=None, extras=(), labels=None
    ) -> Schema:
        """The schema stored in `arrow_schema`'s metadata, or one inferred from its column types.

        Args:
            columns: for inference only, the top-level columns to consider (None: all).
            extras: for inference only, columns to pass through untouched.
            labels: for inference only, the label columns (None: a column named `label`).

        Raises:
            SchemaError: a considered column's type matches no feature kind (strings, ...).
        """
        metadata = arrow_schema.metadata or {}
        if METADATA_KEY in metadata:
            schema = cls.from_json(metadata[METADATA_KEY])
            missing = [c for c in schema.column_names() if arrow_schema.get_field_index(c) < 0]
            if missing:
                raise SchemaError(
                    f"{source}: column {missing[0]!r} is named in the stored gpupre schema but is not "
                    "in the file; the file was altered after writing, rewrite it with "
                    "gp.storage.write_table"
                )
            return schema
        return cls._infer(arrow_schema, source, columns, tuple(extras), labels)

    @classmethod
    def _infer(cls, arrow_schema: pa.Schema, source: str, columns, extras, labels) -> Schema:
        names = set(arrow_schema.names)
        missing = [c for c in (*extras, *(labels or ())) if c not in names]
        if missing:
            raise SchemaError(unknown_message(f"{source}: column", missing[0], names))
        if labels is None:
            default = arrow_schema.get_field_index(DEFAULT_LABEL)
            labels = (DEFAULT_LABEL,) if default >= 0 and is_number_type(arrow_schema.field(default).type) else ()
        wanted = names if columns is None else set(columns)
        features = []
        for fld in arrow_schema:
            if fld.name not in wanted or fld.name in extras or fld.name in labels:
                continue
            owner = score_owner(fld.name, names)
            if owner is not None:  # the score column of a scored feature, handled with its ids
                ids = arrow_schema.field(owner).type
                if not (_is_list(ids) and pa.types.is_integer(ids.value_type)):
                    raise SchemaError(
                        f"{source}: column {fld.name!r} is named as the scores of {owner!r}, but {owner!r} is "
                        f"{ids}, not a list of ids, so the scores would be dropped; rename one of them or leave "
                        f"{fld.name!r} out of the projection"
                    )
                continue
            features.append(Feature(fld.name, infer_kind(fld, names, source)))
        return cls(tuple(features), tuple(labels), extras)


def _feature_entry(f: Feature) -> list:
    """[name, kind, group], plus the provenance of a derived feature (files without it still read)."""
    return [f.name, f.kind, f.group] if f.derived is None else [f.name, f.kind, f.group, f.derived]


def score_owner(column: str, names) -> str | None:
    """The scored feature whose score column `column` is, among the columns `names`; else None."""
    owner = column[: -len(SCORE_SUFFIX)]
    return owner if column.endswith(SCORE_SUFFIX) and owner in names else None


def infer_kind(fld: pa.Field, names, source: str) -> str:
    """The feature kind of a plain Parquet column, or a SchemaError that says why it has none."""
    t = fld.type
    if pa.types.is_floating(t):
        return DENSE
    if pa.types.is_integer(t):
        return SPARSE
    if _is_list(t) and pa.types.is_integer(t.value_type):
        return SCORED if fld.name + SCORE_SUFFIX in names else SPARSE
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return IMAGE
    if pa.types.is_map(t):
        raise SchemaError(
            f"{source}: column {fld.name!r} has type {t}: the map layout, which holds many features in one "
            f"column; flatten the file first (gp.storage.flatten(path, out), or `gpupre flatten PATH OUT`)"
        )
    raise SchemaError(
        f"{source}: column {fld.name!r} has type {t}, which is no feature kind (dense: float, "
        "sparse: integer or list<integer>, scored: list<integer> plus a list<float> "
        f"'{fld.name}.score' column, image: binary); convert it (strings: hash them to ids) or leave it out "
        "of the projection"
    )


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)


def is_number_type(t: pa.DataType) -> bool:
    """A column type that reads as float32: a dense feature or a label."""
    return pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_boolean(t)


def unknown_message(what: str, name, known) -> str:
    """`what name is unknown`, with the closest known names as a hint (case aside), or all of
    them when there are few."""
    lower: dict[str, str] = {}
    for k in known:
        lower.setdefault(str(k).lower(), k)
    close = [lower[c] for c in difflib.get_close_matches(str(name).lower(), list(lower), n=3)]
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    if not close and 0 < len(lower) <= 12:
        hint = f"; the known ones are {', '.join(map(repr, sorted(lower.values())))}"
    return f"{what} {name!r} does not exist ({len(known)} known){hint}"
