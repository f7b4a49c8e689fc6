"""Vectorized conversions that importers share: hex strings and free text to int64 ids."""

from __future__ import annotations

import hashlib

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..batch import offsets_of, one_array
from ..errors import DataError

__all__ = ["hex_to_ids", "split_to_ids", "strings_to_ids"]


@numba.njit(cache=True)
def _parse_hex(data, offsets, valid, out):
    """Parse each string as base 16 into out; returns the index of the first bad string or -1."""
    for i in range(len(offsets) - 1):
        if not valid[i]:
            continue
        value = np.uint64(0)
        lo, hi = offsets[i], offsets[i + 1]
        if hi - lo > 16:
            return i
        for j in range(lo, hi):
            c = data[j]
            if 48 <= c <= 57:
                d = c - 48
            elif 97 <= c <= 102:
                d = c - 87
            elif 65 <= c <= 70:
                d = c - 55
            else:
                return i
            value = (value << np.uint64(4)) | np.uint64(d)
        out[i] = np.int64(value)  # 16-digit ids above 2**63 wrap to negative, as in int64 casts
    return -1


def hex_to_ids(arr: pa.Array, column: str, source: str, first_row: int = 0) -> pa.Array:
    """A string column of hex ids -> int64 ids; null or empty -> null (a missing id).

    Raises:
        DataError: a value is not hexadecimal or longer than 16 digits (names the row).
    """
    arr = pc.if_else(pc.equal(pc.utf8_length(arr), 0), pa.scalar(None, arr.type), arr)
    arr = arr.cast(pa.string())
    arr = one_array(arr)
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    offsets = np.frombuffer(arr.buffers()[1], np.int32)[arr.offset : arr.offset + len(arr) + 1]
    data = np.frombuffer(arr.buffers()[2], np.uint8) if arr.buffers()[2] is not None else np.zeros(0, np.uint8)
    out = np.zeros(len(arr), np.int64)
    bad = _parse_hex(data, offsets, valid, out)
    if bad >= 0:
        raise DataError(
            f"{source}: column {column!r} row {first_row + bad} holds {arr[bad].as_py()!r}, which is not a "
            "hexadecimal id of at most 16 digits; fix or drop the row"
        )
    return pa.array(out, mask=~valid)


def strings_to_ids(arr: pa.Array) -> pa.Array:
    """Stable int64 ids for strings (the first 63 bits of BLAKE2b); null or empty -> null.

    Stable across files, runs and machines, unlike a dictionary encoding.
    """
    arr = one_array(arr)
    arr = arr.cast(pa.string())
    encoded = pc.dictionary_encode(arr)
    uniques = encoded.dictionary.to_pylist()
    hashed = np.array([_hash(s) for s in uniques], np.int64)
    ids = pa.array(hashed).take(encoded.indices)
    empty = pc.fill_null(pc.equal(pc.utf8_length(arr), 0), True)
    return pc.if_else(empty, pa.scalar(None, pa.int64()), ids)


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def split_to_ids(arr: pa.Array, separator: str, numeric: bool) -> pa.Array:
    """A string column of separated ids ("1^2^3", "Comedy|Drama") -> list<int64>; empty -> [].

    Args:
        numeric: the parts are decimal integers (parsed) rather than names (hashed).
    """
    arr = one_array(arr)
    arr = pc.fill_null(arr.cast(pa.string()), "")
    parts = pc.split_pattern(arr, separator)
    flat = parts.flatten()
    keep = pc.greater(pc.utf8_length(flat), 0)
    lengths = pc.list_value_length(parts).to_numpy()
    # drop empty parts ("" splits to [""]; "1^^2" has an empty middle), then recount
    rows = np.repeat(np.arange(len(arr)), lengths)
    keep_np = keep.to_numpy(zero_copy_only=False)
    lengths = np.bincount(rows[keep_np], minlength=len(arr)).astype(np.int32)
    flat = flat.filter(keep)
    values = flat.cast(pa.int64()) if numeric else strings_to_ids(flat)
    return pa.ListArray.from_arrays(pa.array(offsets_of(lengths, np.int32)), values)
