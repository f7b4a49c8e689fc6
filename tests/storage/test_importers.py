"""Importers: Criteo text (CSV and TSV), Taobao and MovieLens CSV, and import_csv's errors."""

import csv
import gzip
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import gpupre as gp
from gpupre.storage import Column, import_criteo, import_csv, import_movielens, import_taobao
from gpupre.storage.importers import CRITEO_COLUMNS


def read_all(path, **kwargs):
    """The dataset at `path` and the batch of its only row group."""
    ds = gp.Dataset(path, **kwargs)
    (unit,) = ds.units()
    return ds, ds.read(unit)


def sparse_lists(batch, name):
    lengths, values, _ = batch.sparse.feature(name)
    ends = np.cumsum(lengths)
    return [values[e - n : e].tolist() for n, e in zip(lengths, ends, strict=True)]


# -- Criteo ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def criteo(tmp_path_factory):
    d = tmp_path_factory.mktemp("criteo")
    gp.storage.write_criteo_text(d / "day.csv", rows=300, seed=1, header=True)
    gp.storage.write_criteo_text(d / "day.tsv", rows=300, seed=1, header=False)
    import_criteo(d / "day.csv", d / "csv.parquet", progress=False)
    import_criteo(d / "day.tsv", d / "tsv.parquet", progress=False)
    return d


def test_criteo_csv_and_tsv_give_identical_data(criteo):
    assert open(criteo / "day.csv").readline().startswith("label,I1,")
    assert open(criteo / "day.tsv").readline().count("\t") == 39
    csv_table, tsv_table = pq.read_table(criteo / "csv.parquet"), pq.read_table(criteo / "tsv.parquet")
    assert csv_table.num_rows == 300
    assert csv_table.equals(tsv_table, check_metadata=True)


def test_a_criteo_header_in_another_order_is_read_by_name(criteo, tmp_path):
    with open(criteo / "day.csv", newline="") as f:
        rows = list(csv.reader(f))
    with open(tmp_path / "moved.csv", "w", newline="") as f:
        csv.writer(f).writerows(row[1:] + row[:1] for row in rows)  # the label last
    import_criteo(tmp_path / "moved.csv", tmp_path / "moved.parquet", progress=False)
    assert pq.read_table(tmp_path / "moved.parquet").equals(pq.read_table(criteo / "csv.parquet"), check_metadata=True)


def test_criteo_values_match_the_text(criteo):
    with open(criteo / "day.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    ds, b = read_all(criteo / "csv.parquet")
    assert ds.schema.names == tuple(f"I{i}" for i in range(1, 14)) + tuple(f"C{i}" for i in range(1, 27))
    assert [f.kind for f in ds.schema.dense] == ["dense"] * 13 and len(ds.schema.sparse) == 26
    np.testing.assert_array_equal(b.labels, [float(r["label"]) for r in rows])
    for i in (1, 7, 13):
        expected = [float(r[f"I{i}"]) if r[f"I{i}"] else np.nan for r in rows]
        np.testing.assert_array_equal(b.dense[i - 1], expected)
    assert np.isnan(b.dense).any()  # the generator leaves 20% of the counts empty
    for i in (1, 14, 26):
        expected = [[int(r[f"C{i}"], 16)] if r[f"C{i}"] else [] for r in rows]
        assert sparse_lists(b, f"C{i}") == expected
    assert (b.sparse.lengths == 0).any()


def write_criteo_line(path, c1="0000000a", c2="ffffffff", c3="", i1="", i2="-1"):
    dense = [i1, i2] + ["3"] * 11
    sparse = [c1, c2, c3] + ["00ABCdef"] * 23
    path.write_text("\t".join(["1"] + dense + sparse) + "\n")


def test_criteo_hex_ids_and_empty_fields(tmp_path):
    write_criteo_line(tmp_path / "one.tsv")
    import_criteo(tmp_path / "one.tsv", tmp_path / "one.parquet", progress=False)
    _, b = read_all(tmp_path / "one.parquet")
    assert sparse_lists(b, "C1") == [[10]]
    assert sparse_lists(b, "C2") == [[4294967295]]
    assert sparse_lists(b, "C3") == [[]]
    assert sparse_lists(b, "C4") == [[0xABCDEF]]
    np.testing.assert_array_equal(b.dense[:2, 0], [np.nan, -1.0])


def test_criteo_bad_hex_names_the_file_row_and_column(tmp_path):
    lines = ["label," + ",".join([f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)])]
    for r in range(5):
        sparse = ["0000000a"] * 26
        if r == 3:
            sparse[4] = "12zz"
        lines.append(",".join(["0"] + ["1"] * 13 + sparse))
    (tmp_path / "bad.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(gp.DataError, match=r"bad\.csv.*column 'C5' row 3 holds '12zz'"):
        import_criteo(tmp_path / "bad.csv", tmp_path / "bad.parquet", progress=False)


def test_bad_hex_row_is_the_row_of_the_file_in_any_block(criteo, tmp_path):
    lines = (criteo / "day.csv").read_text().splitlines()
    fields = lines[251].split(",")  # data row 250
    fields[16] = "12zz"  # C3
    lines[251] = ",".join(fields)
    (tmp_path / "bad.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(gp.DataError, match=r"column 'C3' row 250 holds '12zz'"):
        import_csv(
            tmp_path / "bad.csv", tmp_path / "bad.parquet", CRITEO_COLUMNS, block_size=4096, progress=False
        )


# -- Taobao ---------------------------------------------------------------------------------------
TAOBAO_HEADER = (
    "clk,time_stamp,userid,adgroup_id,pid,cate_id,campaign_id,customer,brand,price,cms_segid,cms_group_id,"
    "final_gender_code,age_level,pvalue_level,shopping_level,occupation,new_user_class_level,click_sequence"
)
TAOBAO_ROWS = [
    "0,2017-05-06 00:00:00,874257,172298,430548_1007,5443,160194,864,339907,3.9,0,3,2,3,,3,0,,170301^573514",
    "1,2017-05-06 00:00:10,227368,519384,430539_1007,6261,137739,1210,,189.0,0,4,2,4,2,3,0,2,",
    "0,2017-05-07 12:30:00,874257,11,430548_1007,1,2,3,4,0.5,5,6,1,1,1,1,1,1,680144",
]


def test_taobao(tmp_path):
    (tmp_path / "taobao.csv").write_text("\n".join([TAOBAO_HEADER, *TAOBAO_ROWS]) + "\n")
    import_taobao(tmp_path / "taobao.csv", tmp_path / "taobao.parquet", progress=False)
    ds, b = read_all(tmp_path / "taobao.parquet", passthrough="time_stamp")
    groups = {f.name: (f.kind, f.group) for f in ds.schema}
    assert groups["userid"] == ("sparse", "user")
    assert groups["adgroup_id"] == ("sparse", "item")
    assert groups["pid"] == ("sparse", "context")
    assert groups["price"] == ("dense", "item")
    assert groups["pvalue_level"] == ("sparse", "user")
    assert groups["click_sequence"] == ("sparse", "user")
    assert ds.schema.labels == ("clk",) and "time_stamp" not in groups
    np.testing.assert_array_equal(b.labels, [0, 1, 0])
    np.testing.assert_array_equal(b.dense_keys, ["price"])
    np.testing.assert_allclose(b.dense[0], [3.9, 189.0, 0.5], rtol=1e-6)
    assert sparse_lists(b, "click_sequence") == [[170301, 573514], [], [680144]]
    assert sparse_lists(b, "userid") == [[874257], [227368], [874257]]
    assert sparse_lists(b, "pvalue_level") == [[], [2], [1]]  # empty -> empty list
    assert sparse_lists(b, "brand") == [[339907], [], [4]]
    pid = sparse_lists(b, "pid")
    assert pid[0] == pid[2] != pid[1] and all(len(p) == 1 for p in pid)  # hashed strings
    np.testing.assert_array_equal(b.extras["time_stamp"], [1494028800, 1494028810, 1494160200])


def test_taobao_epoch_second_time_stamps(tmp_path):
    rows = [r.replace("2017-05-06 00:00:00", "1494028800") for r in TAOBAO_ROWS[:1]]
    (tmp_path / "taobao.csv").write_text("\n".join([TAOBAO_HEADER, *rows]) + "\n")
    import_taobao(tmp_path / "taobao.csv", tmp_path / "taobao.parquet", progress=False)
    assert pq.read_table(tmp_path / "taobao.parquet").column("time_stamp").to_pylist() == [1494028800]


def test_taobao_non_integer_in_click_sequence_is_a_data_error(tmp_path):
    bad = TAOBAO_ROWS[0].replace("170301^573514", "170301^abc")
    (tmp_path / "taobao.csv").write_text("\n".join([TAOBAO_HEADER, bad]) + "\n")
    with pytest.raises(gp.DataError, match=r"taobao\.csv.*'click_sequence' holds a non-integer id"):
        import_taobao(tmp_path / "taobao.csv", tmp_path / "taobao.parquet", progress=False)


# -- MovieLens ------------------------------------------------------------------------------------
MOVIELENS = """user_id,movie_id,rating,timestamp,title,genres,gender,age,occupation,zip
3299,235,4,968035345,Ed Wood (1994),Comedy|Drama,F,25,4,19119
3630,3256,3,966536874,"Patriot Games, The (1992)",Action|Thriller,M,18,4,77005
517,105,5,976203603,"Bridges of Madison County, The (1995)",Drama|Comedy,F,25,14,55408
785,2115,2,975430389,Indiana Jones and the Temple of Doom (1984),Comedy|Drama,M,18,19,29307
"""


def import_ml(tmp_path, name, text):
    (tmp_path / f"{name}.csv").write_text(text)
    import_movielens(tmp_path / f"{name}.csv", tmp_path / f"{name}.parquet", progress=False)
    return read_all(tmp_path / f"{name}.parquet", passthrough=("title", "timestamp"))


def test_movielens(tmp_path):
    ds, b = import_ml(tmp_path, "ml", MOVIELENS)
    groups = {f.name: (f.kind, f.group) for f in ds.schema}
    assert groups == {
        "user_id": ("sparse", "user"),
        "movie_id": ("sparse", "item"),
        "genres": ("sparse", "item"),
        "gender": ("sparse", "user"),
        "age": ("sparse", "user"),
        "occupation": ("sparse", "user"),
        "zip": ("sparse", "user"),
    }
    np.testing.assert_array_equal(b.labels, [4, 3, 5, 2])
    assert b.extras["title"].to_pylist()[1:3] == [
        "Patriot Games, The (1992)",
        "Bridges of Madison County, The (1995)",
    ]
    np.testing.assert_array_equal(b.extras["timestamp"], [968035345, 966536874, 976203603, 975430389])
    assert sparse_lists(b, "movie_id") == [[235], [3256], [105], [2115]]
    genres = sparse_lists(b, "genres")
    assert [len(g) for g in genres] == [2, 2, 2, 2]
    assert genres[0] == genres[3]  # equal strings, equal ids
    assert genres[2] == genres[0][::-1]  # Drama|Comedy: the same ids, in the text's order
    assert len({i for g in genres for i in g}) == 4  # Comedy, Drama, Action, Thriller
    gender = sparse_lists(b, "gender")
    assert gender[0] == gender[2] != gender[1] == gender[3]


def test_movielens_hashed_ids_are_stable_across_imports(tmp_path):
    _, first = import_ml(tmp_path, "a", MOVIELENS)
    reordered = MOVIELENS.splitlines()
    _, second = import_ml(tmp_path, "b", "\n".join([reordered[0], reordered[4], reordered[1]]) + "\n")
    assert sparse_lists(second, "genres") == [sparse_lists(first, "genres")[i] for i in (3, 0)]
    assert sparse_lists(second, "zip") == [sparse_lists(first, "zip")[i] for i in (3, 0)]


# -- import_csv -----------------------------------------------------------------------------------
def test_unparseable_number_is_a_data_error_naming_the_file(tmp_path):
    (tmp_path / "x.csv").write_text("label,price\n1,2.5\n0,abc\n")
    with pytest.raises(gp.DataError, match=r"x\.csv: cannot parse"):
        import_csv(
            tmp_path / "x.csv",
            tmp_path / "x.parquet",
            {"label": Column("label"), "price": Column("dense")},
            progress=False,
        )


def test_import_csv_keeps_only_the_named_columns(tmp_path):
    (tmp_path / "x.csv").write_text("a,b,c\n1,x,2\n3,y,\n")
    schema = import_csv(
        tmp_path / "x.csv", tmp_path / "x.parquet", {"c": Column("id"), "a": Column("dense")}, progress=False
    )
    assert [(f.name, f.kind) for f in schema] == [("c", "sparse"), ("a", "dense")]
    assert pq.read_table(tmp_path / "x.parquet").to_pydict() == {"c": [[2], []], "a": [1.0, 3.0]}


def test_only_an_empty_field_is_missing_and_a_missing_label_is_a_data_error(tmp_path):
    (tmp_path / "x.csv").write_text("y,title,zip,p\n1,NA,NULL,NA\n0,null,,2.5\n")
    columns = {"y": Column("label"), "title": Column("name"), "zip": Column("name"), "p": Column("dense")}
    import_csv(tmp_path / "x.csv", tmp_path / "x.parquet", columns, progress=False)
    assert pq.read_table(tmp_path / "x.parquet").column("p").to_pylist() == [None, 2.5]  # a number's "NA" is missing
    zips = pq.read_table(tmp_path / "x.parquet").column("zip").to_pylist()
    titles = pq.read_table(tmp_path / "x.parquet").column("title").to_pylist()
    assert len(titles[0]) == len(titles[1]) == 1 and titles[0] != titles[1] and len(zips[0]) == 1 and zips[1] == []
    (tmp_path / "y.csv").write_text("y,title,zip,p\n1,a,b,1\n,c,d,2\n")
    with pytest.raises(gp.DataError, match="row 1: label 'y' is empty"):
        import_csv(tmp_path / "y.csv", tmp_path / "y.parquet", columns, progress=False)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"role": "category"}, "'category'"),
        ({"role": "ids"}, "needs a separator"),
        ({"role": "names", "separator": 5}, "separator=5 must be a non-empty string"),
        ({"role": "dense", "group": "users"}, "group='users' must be one of"),
    ],
)
def test_column_rejects_bad_roles(kwargs, match):
    with pytest.raises(gp.ConfigError, match=match):
        Column(**kwargs)


def test_extra_column_keeps_its_arrow_type(tmp_path):
    (tmp_path / "x.csv").write_text("k,v\n1,0.25\n2,0.5\n")
    import_csv(
        tmp_path / "x.csv",
        tmp_path / "x.parquet",
        {"k": Column("id"), "v": Column("extra", arrow_type=pa.float64())},
        progress=False,
    )
    assert pq.read_table(tmp_path / "x.parquet").schema.field("v").type == pa.float64()


# -- errors for a wrong source or destination ------------------------------------------------------
@pytest.mark.parametrize("importer", [import_criteo, import_taobao, import_movielens])
def test_a_missing_source_is_a_data_error_naming_it(tmp_path, importer):
    with pytest.raises(gp.DataError, match=r"cannot read .*nope\.txt"):
        importer(tmp_path / "nope.txt", tmp_path / "x.parquet", progress=False)
    (tmp_path / "src").mkdir()
    with pytest.raises(gp.DataError, match=r"cannot read .*src"):
        importer(tmp_path / "src", tmp_path / "x.parquet", progress=False)


@pytest.mark.skipif(not os.path.isdir("/dev/fd"), reason="names a pipe by /dev/fd")
def test_a_pipe_is_a_data_error_not_read_twice(tmp_path):
    gp.storage.write_criteo_text(tmp_path / "day.tsv", rows=5, header=False)
    read, write = os.pipe()
    os.write(write, (tmp_path / "day.tsv").read_bytes())  # `cat day.tsv | gpupre import criteo /dev/stdin ...`
    os.close(write)
    try:
        with pytest.raises(gp.DataError, match=f"/dev/fd/{read} is a pipe, which the importer cannot read twice"):
            import_criteo(f"/dev/fd/{read}", tmp_path / "x.parquet", progress=False)
    finally:
        os.close(read)
    assert not (tmp_path / "x.parquet").exists()


def test_a_destination_directory_is_a_config_error(tmp_path):
    gp.storage.write_criteo_text(tmp_path / "day.tsv", rows=5, header=False)
    (tmp_path / "out").mkdir()
    with pytest.raises(gp.ConfigError, match=r"out is a directory; pass the path of a Parquet file to write"):
        import_criteo(tmp_path / "day.tsv", tmp_path / "out", progress=False)


@pytest.mark.parametrize(
    "text, importer, match",
    [
        ("criteo", import_taobao, r"has no column clk, time_stamp, .*\(its columns: label, I1, .*criteo"),
        ("taobao", import_movielens, r"has no column user_id, .*\(its columns: clk, .*import_taobao"),
        ("movielens", import_taobao, r"has no column clk, .*\(its columns: user_id, .*import_movielens"),
    ],
)
def test_a_file_of_another_format_names_the_missing_columns_and_its_importer(tmp_path, text, importer, match):
    src = tmp_path / "data.csv"
    if text == "criteo":
        gp.storage.write_criteo_text(src, rows=5, header=True)
    else:
        taobao = "\n".join([TAOBAO_HEADER, *TAOBAO_ROWS]) + "\n"
        src.write_text({"taobao": taobao, "movielens": MOVIELENS}[text])
    with pytest.raises(gp.DataError, match=match):
        importer(src, tmp_path / "x.parquet", progress=False)
    assert not (tmp_path / "x.parquet").exists()


def test_import_csv_names_a_column_the_file_lacks(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(gp.DataError, match=r"x\.csv has no column Z \(its columns: a, b\); name only"):
        columns = {"a": Column("dense"), "Z": Column("dense")}
        import_csv(tmp_path / "x.csv", tmp_path / "x.parquet", columns, progress=False)


def test_import_csv_refuses_a_repeated_column_name_rather_than_read_its_first(tmp_path):
    (tmp_path / "x.csv").write_text("a,seq,seq,seq\n1,7,8,9\n")  # a list spread over columns, as some exports do
    with pytest.raises(gp.DataError, match="column 'seq' appears 3 times in its header line"):
        import_csv(tmp_path / "x.csv", tmp_path / "x.parquet", {"a": Column("label"), "seq": Column("id")}, progress=False)
    assert not (tmp_path / "x.parquet").exists()
    import_csv(tmp_path / "x.csv", tmp_path / "x.parquet", {"a": Column("label")}, progress=False)  # not read: fine


def test_a_parse_error_late_in_the_file_leaves_no_output(tmp_path):
    good = "".join(f"{i % 2},{i}.5\n" for i in range(2000))
    (tmp_path / "x.csv").write_text("label,price\n" + good + "0,abc\n")
    with pytest.raises(gp.DataError, match="cannot parse"):
        import_csv(
            tmp_path / "x.csv",
            tmp_path / "x.parquet",
            {"label": Column("label"), "price": Column("dense")},
            row_group_rows=100,
            block_size=4096,
            progress=False,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.csv"]


def test_criteo_csv_with_a_byte_order_mark_imports_like_one_without(criteo, tmp_path):
    text = (criteo / "day.csv").read_text()
    (tmp_path / "bom.csv").write_text(text, encoding="utf-8-sig")  # as Excel and other Windows tools save it
    import_criteo(tmp_path / "bom.csv", tmp_path / "bom.parquet", progress=False)
    assert pq.read_table(tmp_path / "bom.parquet").equals(pq.read_table(criteo / "csv.parquet"), check_metadata=True)


def test_import_csv_columns_must_map_names_to_columns(tmp_path):
    (tmp_path / "x.csv").write_text("label,price\n1,2\n")
    for columns in (["label"], {"label": "label"}, {}):
        with pytest.raises(gp.ConfigError, match=r"columns must map each column name to a gp\.storage\.Column"):
            import_csv(tmp_path / "x.csv", tmp_path / "x.parquet", columns, progress=False)


@pytest.mark.parametrize("kw, words", [({"delimiter": ",,"}, "one character"), ({"src": None}, "src=None"),
                                       ({"block_size": 0}, "block_size=0")])  # fmt: skip
def test_import_csv_arguments_are_config_errors(tmp_path, kw, words):
    (tmp_path / "x.csv").write_text("a\n1\n")
    args = {"src": tmp_path / "x.csv", "dst": tmp_path / "x.parquet", "columns": {"a": Column("dense")}, **kw}
    with pytest.raises(gp.ConfigError, match=words):
        import_csv(**args, progress=False)


def test_a_criteo_header_with_quoted_names_is_read_as_a_header(criteo, tmp_path):
    with open(criteo / "day.csv", newline="") as f:
        rows = list(csv.reader(f))
    with open(tmp_path / "quoted.csv", "w", newline="") as f:
        csv.writer(f, quoting=csv.QUOTE_ALL).writerows(rows)  # as spreadsheet tools and R's write.csv save it
    import_criteo(tmp_path / "quoted.csv", tmp_path / "quoted.parquet", progress=False)
    assert pq.read_table(tmp_path / "quoted.parquet").equals(pq.read_table(criteo / "csv.parquet"), check_metadata=True)


def test_a_destination_that_is_the_source_is_a_config_error_and_keeps_the_source(tmp_path):
    gp.storage.write_criteo_text(tmp_path / "day.tsv", rows=5, header=False)
    text = (tmp_path / "day.tsv").read_bytes()
    with pytest.raises(gp.ConfigError, match=r"day\.tsv'? is the source text file"):
        import_criteo(tmp_path / "day.tsv", tmp_path / "." / "day.tsv", progress=False)
    assert (tmp_path / "day.tsv").read_bytes() == text


@pytest.mark.parametrize("importer", [import_criteo, import_taobao])
def test_a_compressed_or_parquet_source_is_a_data_error_saying_what_it_is(criteo, tmp_path, importer):
    with open(criteo / "day.tsv", "rb") as f, gzip.open(tmp_path / "day.tsv.gz", "wb") as g:
        shutil.copyfileobj(f, g)  # as Criteo's days are published
    with pytest.raises(gp.DataError, match=r"day\.tsv\.gz is gzip-compressed, not delimited text; decompress it"):
        importer(tmp_path / "day.tsv.gz", tmp_path / "gz.parquet", progress=False)
    with pytest.raises(gp.DataError, match=r"csv\.parquet is a Parquet file, not delimited text; read it with gp\.Dataset"):
        importer(criteo / "csv.parquet", tmp_path / "again.parquet", progress=False)


def test_a_csv_whose_lines_end_in_cr_alone_imports_like_one_with_lf(criteo, tmp_path):
    text = (criteo / "day.csv").read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r")  # classic Mac OS
    (tmp_path / "cr.csv").write_bytes(text)
    import_criteo(tmp_path / "cr.csv", tmp_path / "cr.parquet", progress=False)
    assert pq.read_table(tmp_path / "cr.parquet").equals(pq.read_table(criteo / "csv.parquet"), check_metadata=True)


def test_a_csv_whose_header_starts_like_parquet_is_still_text(tmp_path):
    (tmp_path / "x.csv").write_text("PAR1_score,label\n0.5,1\n")
    import_csv(tmp_path / "x.csv", tmp_path / "x.parquet", {"PAR1_score": Column("dense"), "label": Column("label")},
               progress=False)  # fmt: skip
    assert pq.read_table(tmp_path / "x.parquet").column("PAR1_score").to_pylist() == [0.5]
