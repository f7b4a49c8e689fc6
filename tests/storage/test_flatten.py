"""The legacy map layout: flat_to_map / map_to_flat, flatten(), legacy files, bad maps."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from parquet_data import corrupt_row_group

import gpupre as gp
from gpupre.storage import MapLayout, flat_to_map, flatten, map_to_flat
from gpupre.storage.flatten import LAYOUT_KEY

F = gp.Feature
INT64 = pa.list_(pa.int64())
FLOAT32 = pa.list_(pa.float32())


def columns_as_lists(table):
    return {name: table.column(name).to_pylist() for name in table.column_names}


def test_map_round_trip_of_synthetic_data_is_the_identity(synth_file):
    flat = pq.read_table(synth_file)
    schema = gp.Dataset(synth_file).full_schema
    mapped, layout = flat_to_map(flat, schema)
    assert mapped.column_names == [
        "float_features",
        "id_list_features",
        "id_score_list_features",
        "label",
        "request_id",
        "row_id",
    ]
    assert layout.keys == tuple(range(len(schema)))
    back = map_to_flat(mapped, layout)
    assert back.column_names == schema.column_names()
    expected = columns_as_lists(flat.select(schema.column_names()))
    assert columns_as_lists(back) == expected


def test_missing_values_and_empty_lists_become_absent_keys():
    schema = gp.Schema((F("d", "dense"), F("a", "sparse"), F("s", "scored")), ("label",), ("rid",))
    table = pa.table(
        {
            "d": pa.array([1.0, None, float("nan"), 4.0], pa.float32()),
            "a": pa.array([[1, 2], None, [], [3]], INT64),
            "s": pa.array([[5], [6, 7], [], None], INT64),
            "s.score": pa.array([[0.5], [0.25, 0.75], [], None], FLOAT32),
            "label": pa.array([1.0, 0.0, 1.0, 0.0], pa.float32()),
            "rid": pa.array([10, 11, 12, 13]),
        }
    )
    mapped, layout = flat_to_map(table, schema, keys=(7, 3, 9))
    assert mapped.column("float_features").to_pylist() == [[(7, 1.0)], [], [], [(7, 4.0)]]
    assert mapped.column("id_list_features").to_pylist() == [[(3, [1, 2])], [], [], [(3, [3])]]
    assert mapped.column("id_score_list_features").to_pylist() == [
        [(9, [(5, 0.5)])],
        [(9, [(6, 0.25), (7, 0.75)])],
        [],
        [],
    ]
    assert json.loads(mapped.schema.metadata[LAYOUT_KEY])["keys"] == [7, 3, 9]
    back = columns_as_lists(map_to_flat(mapped, layout))
    assert back == {
        "d": [1.0, None, None, 4.0],  # NaN and null are both absent, hence null
        "a": [[1, 2], [], [], [3]],  # null and [] are both absent, hence []
        "s": [[5], [6, 7], [], []],
        "s.score": [[0.5], [0.25, 0.75], [], []],
        "label": [1.0, 0.0, 1.0, 0.0],
        "rid": [10, 11, 12, 13],
    }


def test_map_to_flat_of_a_slice_is_the_slice_of_map_to_flat(synth_map_file):
    table = pq.read_table(synth_map_file)
    layout = MapLayout.of_file(synth_map_file, progress=False)
    names = [layout.schema.names[i] for i in (0, 7, 14, 15)]  # dense, sparse, both scored
    full = map_to_flat(table, layout, names)
    part = map_to_flat(table.slice(37, 101), layout, names)
    assert part.column_names == [*full.column_names]
    assert columns_as_lists(part) == columns_as_lists(full.slice(37, 101))


def test_flatten_equals_the_directly_written_flat_file(synth_file, synth_map_file, tmp_path):
    dst = tmp_path / "flattened.parquet"
    schema = flatten(synth_map_file, dst, progress=False)
    assert schema == gp.Dataset(synth_file).full_schema
    direct, flattened = pq.ParquetFile(synth_file), pq.ParquetFile(dst)
    assert flattened.schema_arrow.remove_metadata() == direct.schema_arrow.remove_metadata()
    assert flattened.metadata.num_row_groups == direct.metadata.num_row_groups == 3
    assert flattened.read().equals(direct.read())


def test_flatten_projection_and_row_groups(synth_map_file, tmp_path):
    dst = tmp_path / "projected.parquet"
    schema = flatten(
        synth_map_file, dst, features=["scored_001", "dense_002"], row_group_rows=150, progress=False
    )
    assert schema.names == ("scored_001", "dense_002")
    md = pq.ParquetFile(dst).metadata
    assert [md.row_group(i).num_rows for i in range(md.num_row_groups)] == [150, 150, 150, 150]
    ds = gp.Dataset(dst)
    assert ds.schema.names == ("scored_001", "dense_002")
    assert pq.read_table(dst).column_names == [
        "scored_001",
        "scored_001.score",
        "dense_002",
        "label",
        "request_id",
        "row_id",
    ]


def test_flatten_of_a_flat_file_is_a_schema_error(synth_file, tmp_path):
    with pytest.raises(gp.SchemaError, match="no map column"):
        flatten(synth_file, tmp_path / "out.parquet", progress=False)


def legacy_map_table():
    """A map-layout table as another system writes it: no gpupre metadata, keys 3, 5 and 9."""
    offsets = pa.array([0, 1, 1, 2], pa.int32())
    return pa.table(
        {
            "float_features": pa.MapArray.from_arrays(
                pa.array([0, 2, 2, 3], pa.int32()),
                pa.array([3, 4, 3], pa.int32()),
                pa.array([1.5, 2.5, 3.5], pa.float32()),
            ),
            "id_list_features": pa.MapArray.from_arrays(
                offsets, pa.array([5, 5], pa.int32()), pa.array([[10, 11], [12]], INT64)
            ),
            "id_score_list_features": pa.MapArray.from_arrays(
                offsets,
                pa.array([9, 9], pa.int32()),
                pa.array([[(1, 0.5)], [(2, 0.25), (3, 0.75)]], pa.map_(pa.int64(), pa.float32())),
            ),
            "label": pa.array([1.0, 0.0, 1.0], pa.float32()),
            "request_id": pa.array([7, 7, 8]),
        }
    )


def test_legacy_map_file_flattens_with_default_names(tmp_path):
    src, dst = tmp_path / "legacy.parquet", tmp_path / "flat.parquet"
    pq.write_table(legacy_map_table(), src)
    schema = flatten(src, dst, progress=False)
    assert [(f.name, f.kind) for f in schema] == [
        ("float_3", "dense"),
        ("float_4", "dense"),
        ("id_list_5", "sparse"),
        ("id_score_list_9", "scored"),
    ]
    assert schema.labels == ("label",) and schema.extras == ("request_id",)
    assert columns_as_lists(pq.read_table(dst)) == {
        "float_3": [1.5, None, 3.5],
        "float_4": [2.5, None, None],
        "id_list_5": [[10, 11], [], [12]],
        "id_score_list_9": [[1], [], [2, 3]],
        "id_score_list_9.score": [[0.5], [], [0.25, 0.75]],
        "label": [1.0, 0.0, 1.0],
        "request_id": [7, 7, 8],
    }


LEGACY_LAYOUT = MapLayout(
    gp.Schema(
        (
            F("float_3", "dense"),
            F("float_4", "dense"),
            F("id_list_5", "sparse"),
            F("id_score_list_9", "scored"),
        ),
        ("label",),
        ("request_id",),
    ),
    (3, 4, 5, 9),
)


def test_map_to_flat_of_a_legacy_table_with_a_known_layout():
    flat = columns_as_lists(map_to_flat(legacy_map_table(), LEGACY_LAYOUT, ["id_score_list_9", "float_4"]))
    assert flat == {
        "id_score_list_9": [[1], [], [2, 3]],
        "id_score_list_9.score": [[0.5], [], [0.25, 0.75]],
        "float_4": [2.5, None, None],
        "label": [1.0, 0.0, 1.0],
        "request_id": [7, 7, 8],
    }


def test_null_maps_count_as_empty_whatever_their_offsets_say():
    # row 1 is null but its offsets span two entries of keys 3 and 4
    null_row = pa.array([False, True, False])
    offsets = pa.array([0, 1, 3, 4], pa.int32())
    table = pa.table(
        {
            "float_features": pa.MapArray.from_arrays(
                offsets,
                pa.array([3, 3, 4, 4], pa.int32()),
                pa.array([1.0, 2.0, 3.0, 4.0], pa.float32()),
                mask=null_row,
            ),
            "id_list_features": pa.MapArray.from_arrays(
                offsets,
                pa.array([5, 5, 6, 5], pa.int32()),
                pa.array([[1], [2], [3], [4]], INT64),
                mask=null_row,
            ),
        }
    )
    layout = MapLayout(
        gp.Schema((F("float_3", "dense"), F("float_4", "dense"), F("id_list_5", "sparse"))), (3, 4, 5)
    )
    assert columns_as_lists(map_to_flat(table, layout)) == {
        "float_3": [1.0, None, None],
        "float_4": [None, None, 4.0],
        "id_list_5": [[1], [], [4]],
    }


def test_a_duplicate_key_in_a_row_is_a_data_error():
    table = pa.table(
        {
            "id_list_features": pa.MapArray.from_arrays(
                pa.array([0, 1, 3], pa.int32()),
                pa.array([5, 5, 5], pa.int32()),
                pa.array([[1], [2], [3]], INT64),
            )
        }
    )
    layout = MapLayout(gp.Schema((F("id_list_5", "sparse"),)), (5,))
    with pytest.raises(gp.DataError, match=r"src: row 1 holds map key 5 \('id_list_5'\) twice"):
        map_to_flat(table, layout, source="src")


def test_flatten_names_the_file_and_row_group_of_a_duplicate_key(tmp_path):
    table = pa.table(
        {
            "float_features": pa.MapArray.from_arrays(
                pa.array([0, 1, 2, 4], pa.int32()),
                pa.array([3, 3, 3, 3], pa.int32()),
                pa.array([1.0, 2.0, 3.0, 4.0], pa.float32()),
            )
        }
    )
    layout = MapLayout(gp.Schema((F("float_3", "dense"),)), (3,))
    src = tmp_path / "dup.parquet"
    pq.write_table(
        table.replace_schema_metadata({LAYOUT_KEY: layout.to_json().encode()}), src, row_group_size=2
    )
    with pytest.raises(gp.DataError, match=r"dup\.parquet row group 1: row 0 holds map key 3"):
        flatten(src, tmp_path / "out.parquet", progress=False)


def test_map_layout_json_round_trip():
    assert MapLayout.from_json(LEGACY_LAYOUT.to_json()) == LEGACY_LAYOUT
    assert LEGACY_LAYOUT.key_of() == {"float_3": 3, "float_4": 4, "id_list_5": 5, "id_score_list_9": 9}


def test_flattened_dense_values_match_the_map_entries(synth_map_file):
    """A spot check of map_to_flat against a plain-Python decode of the maps."""
    table = pq.read_table(synth_map_file)
    layout = MapLayout.of_file(synth_map_file, progress=False)
    key = layout.key_of()["dense_001"]
    expected = [dict(m).get(key) for m in table.column("float_features").to_pylist()]
    flat = map_to_flat(table, layout, ["dense_001"])
    got = flat.column("dense_001").to_pylist()
    assert got == expected and None in got and len(set(got)) > 100
    np.testing.assert_array_equal(flat.column("label"), table.column("label"))


def test_a_map_column_of_strings_is_a_schema_error_naming_it(tmp_path):
    strings = pa.array([[(1, "a")]], pa.map_(pa.int32(), pa.string()))
    pq.write_table(pa.table({"float_features": strings}), tmp_path / "bad.parquet")
    with pytest.raises(gp.SchemaError, match=r"bad\.parquet: map column 'float_features' has type map<int32, string"):
        flatten(tmp_path / "bad.parquet", tmp_path / "out.parquet", progress=False)
    with pytest.raises(gp.SchemaError, match=r"'float_features' has type map<int32, string"):
        map_to_flat(pa.table({"float_features": strings}), MapLayout.of_file(tmp_path / "bad.parquet"))


def test_a_map_file_with_no_rows_flattens_to_a_file_with_no_rows(tmp_path):
    empty = pa.table({"float_features": pa.array([], pa.map_(pa.int32(), pa.float32())), "label": pa.array([], pa.float32())})
    pq.write_table(empty, tmp_path / "empty.parquet")
    schema = flatten(tmp_path / "empty.parquet", tmp_path / "out.parquet", progress=False)
    assert schema.labels == ("label",) and pq.read_table(tmp_path / "out.parquet").num_rows == 0


def test_map_keys_must_be_one_distinct_int32_per_feature():
    from gpupre.storage.flatten import flat_to_map

    table = pa.table({"a": pa.array([1.0]), "b": pa.array([2.0]), "c": pa.array([3.0])})
    schema = gp.Schema.from_arrow(table.schema)
    for keys in ([10], [5, 5, 5], [1, 2, 2**40], 7):
        with pytest.raises(gp.ConfigError, match="int32 keys, one per feature|list of int32"):
            flat_to_map(table, schema, keys)
    mixed = pa.table({"a": pa.array([1.0]), "s": pa.array([[1, 2]], pa.list_(pa.int64()))})
    flat_to_map(mixed, gp.Schema.from_arrow(mixed.schema), [0, 0])  # each kind has its own map
    with pytest.raises(gp.SchemaError, match="no column 'c'"):
        flat_to_map(table.drop(["c"]), schema)


@pytest.mark.parametrize("with_layout", [True, False], ids=["gpupre map file", "legacy map file"])
def test_a_corrupt_row_group_is_a_data_error_naming_it_and_writes_nothing(synth_map_file, tmp_path, with_layout):
    table = pq.read_table(synth_map_file)
    src = tmp_path / "corrupt.parquet"
    pq.write_table(table if with_layout else table.replace_schema_metadata(None), src, row_group_size=200)
    corrupt_row_group(src, src, 1)
    with pytest.raises(gp.DataError, match=r"corrupt\.parquet row group 1 cannot be read"):
        flatten(src, tmp_path / "out.parquet", progress=False)
    assert list(tmp_path.iterdir()) == [src]


def test_flatten_refuses_null_scores_naming_the_row_group_and_writes_nothing(tmp_path):
    scored = pa.array([[(5, [(1, 0.5)])], [(5, [(2, None)])]], pa.map_(pa.int32(), pa.map_(pa.int32(), pa.float64())))
    src = tmp_path / "legacy.parquet"
    pq.write_table(pa.table({"id_score_list_features": scored, "label": [1.0, 0.0]}), src, row_group_size=1)
    with pytest.raises(gp.DataError, match=r"legacy\.parquet row group 1: scored feature 'id_score_list_5' .* 1 null"):
        flatten(src, tmp_path / "out.parquet", progress=False)
    assert list(tmp_path.iterdir()) == [src]


def test_flatten_refuses_null_ids_naming_the_row_group_and_writes_nothing(tmp_path):
    """The reader refuses null ids inside a list: flatten must not write a file it cannot read."""
    ids = pa.array([[(3, [1, 2])], [(3, [4, None])]], pa.map_(pa.int32(), INT64))
    src = tmp_path / "legacy.parquet"
    pq.write_table(pa.table({"id_list_features": ids, "label": [1.0, 0.0]}), src, row_group_size=1)
    with pytest.raises(gp.DataError, match=r"legacy\.parquet row group 1: sparse feature 'id_list_3' .* 1 null ids"):
        flatten(src, tmp_path / "out.parquet", progress=False)
    assert list(tmp_path.iterdir()) == [src]


def test_flat_to_map_takes_an_integer_sparse_column_and_refuses_null_ids_naming_the_feature():
    table = pa.table({"d": pa.array([1.0, None]), "s": pa.array([5, None], pa.int64()), "label": [1.0, 0.0]})
    mapped, layout = flat_to_map(table, gp.Schema.from_arrow(table.schema))
    assert map_to_flat(mapped, layout).to_pylist() == [{"d": 1.0, "s": [5], "label": 1.0}, {"d": None, "s": [], "label": 0.0}]
    nulls = pa.table({"s": pa.array([[1, None]], INT64), "label": [1.0]})
    with pytest.raises(gp.DataError, match=r"sparse feature 's' holds 1 null ids"):
        flat_to_map(nulls, gp.Schema.from_arrow(nulls.schema))


def test_numpy_map_keys_are_stored_as_ints():
    schema = gp.Schema((F("a", "dense"), F("b", "dense")), ("label",))
    table = pa.table({"a": pa.array([1.0], pa.float32()), "b": pa.array([2.0], pa.float32()), "label": [1.0]})
    _, layout = flat_to_map(table, schema, keys=np.array([7, 9]))
    assert layout.keys == (7, 9) and all(type(k) is int for k in layout.keys)
    assert MapLayout.from_json(layout.to_json()) == layout


def test_flattening_onto_the_source_file_is_a_config_error_and_keeps_it(synth_map_file, tmp_path):
    data = open(synth_map_file, "rb").read()
    with pytest.raises(gp.ConfigError, match="is the source map-layout file, which writing it would replace"):
        flatten(synth_map_file, synth_map_file, progress=False)
    assert open(synth_map_file, "rb").read() == data


def test_flatten_of_no_path_is_a_config_error(tmp_path):
    with pytest.raises(gp.ConfigError, match="src=None must be the path of a map-layout Parquet file"):
        flatten(None, tmp_path / "out.parquet", progress=False)
