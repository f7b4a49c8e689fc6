"""The conversions importers share: hex ids, hashed strings, separated id lists."""

import pyarrow as pa
import pytest

import gpupre as gp
from gpupre.storage._convert import hex_to_ids, split_to_ids, strings_to_ids


def test_hex_to_ids():
    arr = pa.array(["0000000a", "ffffffff", "", None, "ABCdef", "7fffffffffffffff", "ffffffffffffffff", "0"])
    assert hex_to_ids(arr, "C1", "src").to_pylist() == [
        10,
        4294967295,
        None,  # empty is a missing id
        None,
        0xABCDEF,
        2**63 - 1,
        -1,  # 16 digits above 2**63 wrap, as an int64 cast does
        0,
    ]
    chunked = pa.chunked_array([arr.slice(0, 3), arr.slice(3)])
    assert hex_to_ids(chunked, "C1", "src").to_pylist() == hex_to_ids(arr, "C1", "src").to_pylist()


@pytest.mark.parametrize("bad", ["0x1f", "12 ", "g", "1" * 17, "-1"])
def test_bad_hex_is_a_data_error_naming_row_and_column(bad):
    arr = pa.array(["01", None, bad, "zz"])
    with pytest.raises(gp.DataError, match=rf"src: column 'C7' row 2 holds '{bad}'"):
        hex_to_ids(arr, "C7", "src")


def test_strings_to_ids_are_stable_non_negative_and_distinct():
    words = ["Comedy", "Drama", "", None, "Comedy", "drama"]
    ids = strings_to_ids(pa.array(words)).to_pylist()
    assert ids[2] is None and ids[3] is None
    assert ids[0] == ids[4] and len({ids[0], ids[1], ids[5]}) == 3
    assert all(0 <= i < 2**63 for i in ids if i is not None)
    # stable: the same string gets the same id whatever else is in the column, and across chunks
    assert strings_to_ids(pa.array(["drama"])).to_pylist() == [ids[5]]
    chunked = pa.chunked_array([pa.array(words[:3]), pa.array(words[3:])])
    assert strings_to_ids(chunked).to_pylist() == ids


def test_split_to_ids_numeric():
    arr = pa.array(["1^2^3", "", None, "4", "5^^6", "^7^"])
    assert split_to_ids(arr, "^", numeric=True).to_pylist() == [[1, 2, 3], [], [], [4], [5, 6], [7]]
    assert split_to_ids(pa.array([], pa.string()), "^", numeric=True).to_pylist() == []


def test_split_to_ids_names_hash_each_part():
    lists = split_to_ids(pa.array(["Comedy|Drama", "Drama", ""]), "|", numeric=False).to_pylist()
    comedy, drama = strings_to_ids(pa.array(["Comedy", "Drama"])).to_pylist()
    assert lists == [[comedy, drama], [drama], []]


def test_split_to_ids_rejects_non_integers():
    with pytest.raises(pa.ArrowInvalid):
        split_to_ids(pa.array(["1^x"]), "^", numeric=True)
