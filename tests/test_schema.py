"""Feature kinds, Schema lookups, projection, JSON/Arrow round trips and inference."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import gpupre as gp
from gpupre.schema import METADATA_KEY

F = gp.Feature


def example_schema():
    return gp.Schema(
        (
            F("age", "dense", "user"),
            F("item_ids", "sparse", "item"),
            F("income", "dense"),
            F("terms", "scored", "context"),
        ),
        labels=("label",),
        extras=("row_id",),
    )


@pytest.mark.parametrize(
    "args, match",
    [
        (("", "dense"), "non-empty"),
        (("x.score", "sparse"), "reserved"),
        (("x", "dense2"), "'dense2'"),
        (("x", "dense", "users"), "'users'"),
    ],
)
def test_feature_rejects_bad_definitions(args, match):
    with pytest.raises(gp.SchemaError, match=match):
        F(*args)


def test_feature_columns_and_arrow_types():
    assert F("d", "dense").arrow_fields() == [pa.field("d", pa.float32())]
    assert F("s", "sparse").arrow_fields() == [pa.field("s", pa.list_(pa.int64()))]
    scored = F("w", "scored")
    assert scored.columns == ("w", "w.score")
    assert [f.type for f in scored.arrow_fields()] == [pa.list_(pa.int64()), pa.list_(pa.float32())]


@pytest.mark.parametrize(
    "features, extras",
    [
        ((F("a", "dense"), F("a", "sparse")), ()),
        ((F("a", "dense"),), ("a",)),
        ((F("s", "scored"),), ("s.score",)),
    ],
)
def test_schema_rejects_duplicate_columns(features, extras):
    with pytest.raises(gp.SchemaError, match="appears twice"):
        gp.Schema(features, (), extras)


def test_kinds_keep_column_order():
    schema = example_schema()
    assert [f.name for f in schema.dense] == ["age", "income"]
    assert [f.name for f in schema.sparse] == ["item_ids", "terms"]  # scored features are sparse keys
    assert schema.column_names() == ["age", "item_ids", "income", "terms", "terms.score", "label", "row_id"]
    assert "item_ids" in schema and "terms.score" not in schema and len(schema) == 4


def test_unknown_feature_suggests_close_names():
    with pytest.raises(gp.SchemaError, match=r"'item_id' does not exist.*did you mean 'item_ids'"):
        example_schema()["item_id"]
    with pytest.raises(gp.SchemaError, match=r"'AGE' does not exist.*did you mean 'age'"):  # case aside
        example_schema()["AGE"]
    with pytest.raises(gp.SchemaError, match=r"'click' does not exist.*known ones are 'age', 'income', 'item_ids', 'terms'"):
        example_schema()["click"]  # nothing close: a few names are all listed


def test_select_keeps_the_given_order_labels_and_extras():
    selected = example_schema().select(["terms", "age"])
    assert selected.names == ("terms", "age")
    assert selected.labels == ("label",) and selected.extras == ("row_id",)
    assert example_schema().select("income").names == ("income",)
    with pytest.raises(gp.SchemaError, match=r"projected feature 'incme'.*did you mean 'income'"):
        example_schema().select(["age", "incme"])


def test_json_and_arrow_round_trips():
    schema = example_schema()
    assert gp.Schema.from_json(schema.to_json()) == schema
    arrow = schema.to_arrow({"row_id": pa.string()})
    assert arrow.field("terms.score").type == pa.list_(pa.float32())
    assert arrow.field("label").type == pa.float32()
    assert arrow.field("row_id").type == pa.string()
    assert gp.Schema.from_arrow(arrow) == schema  # read back from the metadata, groups included


CHAIN = '[{"features":["a","b"],"num_buckets":10,"op":"Cross","out":["ab"],"salt":0}]'


def test_derived_provenance_round_trips_and_counts_in_equality():
    base = example_schema()
    derived = gp.Schema(base.features + (F("ab", "sparse", "user", CHAIN),), base.labels, base.extras)
    assert gp.Schema.from_json(derived.to_json()) == derived
    assert gp.Schema.from_arrow(derived.to_arrow({"row_id": pa.string()}))["ab"].derived == CHAIN
    assert derived.select(["ab"])["ab"].derived == CHAIN
    other = gp.Schema(base.features + (F("ab", "sparse", "user"),), base.labels, base.extras)
    assert other != derived and len({derived: 1, other: 2}) == 2
    with pytest.raises(gp.SchemaError, match="derived="):
        F("ab", "sparse", derived="")


def test_schema_json_without_derived_keeps_the_old_format_and_reads(tmp_path):
    old = '{"features": [["age", "dense", "user"], ["ids", "sparse", null]], "labels": [], "extras": []}'
    schema = gp.Schema.from_json(old)
    assert [f.derived for f in schema] == [None, None]
    assert schema.to_json() == old
    table = pa.table({"age": pa.array([1.0], pa.float32()), "ids": pa.array([[1, 2]], pa.list_(pa.int64()))})
    pq.write_table(table.replace_schema_metadata({METADATA_KEY: old.encode()}), tmp_path / "old.parquet")
    assert gp.Dataset(tmp_path / "old.parquet").schema == schema


def test_inference_of_plain_columns():
    arrow = pa.schema(
        [
            ("price", pa.float64()),
            ("user", pa.int32()),
            ("history", pa.list_(pa.int16())),
            ("tags", pa.large_list(pa.int64())),
            ("tags.score", pa.list_(pa.float32())),
            ("label", pa.int8()),
            ("name", pa.string()),
            ("thumb", pa.binary()),
        ]
    )
    schema = gp.Schema.from_arrow(arrow, extras=("name",))
    assert [(f.name, f.kind) for f in schema] == [
        ("price", "dense"),
        ("user", "sparse"),
        ("history", "sparse"),
        ("tags", "scored"),
        ("thumb", "image"),
    ]
    assert [f.name for f in schema.sparse] == ["user", "history", "tags"] and schema.images == (schema["thumb"],)
    assert schema.labels == ("label",) and schema.extras == ("name",)


def test_inference_rejects_a_string_column_naming_source_and_column():
    arrow = pa.schema([("price", pa.float32()), ("city", pa.string())])
    with pytest.raises(gp.SchemaError, match=r"data\.parquet: column 'city' has type string"):
        gp.Schema.from_arrow(arrow, "data.parquet")
    # a column outside the projection is not inspected
    assert gp.Schema.from_arrow(arrow, "data.parquet", columns=["price"]).names == ("price",)


def test_inference_rejects_unknown_extras():
    with pytest.raises(gp.SchemaError, match="'row_idx'.*did you mean 'row_id'"):
        gp.Schema.from_arrow(pa.schema([("row_id", pa.int64())]), extras=("row_idx",))


def test_stored_schema_naming_a_missing_column_is_rejected():
    arrow = example_schema().to_arrow()
    altered = arrow.remove(arrow.get_field_index("terms.score"))
    with pytest.raises(gp.SchemaError, match=r"f\.parquet: column 'terms\.score'.*not in the file"):
        gp.Schema.from_arrow(altered, "f.parquet")


def test_a_score_column_beside_a_column_that_is_not_an_id_list_is_a_schema_error(tmp_path):
    path = tmp_path / "stray.parquet"
    pq.write_table(pa.table({"x": [1.5], "x.score": [[1.0]], "label": [1.0]}), path)
    with pytest.raises(gp.SchemaError, match=r"'x\.score' is named as the scores of 'x', but 'x' is double"):
        gp.Dataset(path)
    assert gp.Dataset(path, features=["x"]).schema.names == ("x",)  # the scores left out: nothing dropped unasked
