"""Parquet files the tests break on purpose."""

import pyarrow.parquet as pq


def corrupt_row_group(src, dst, row_group: int) -> None:
    """Copy `src` to `dst` with garbage over the first page header of each column chunk of
    `row_group`: the footer still reads, so the file opens, but that row group cannot be decoded."""
    group = pq.ParquetFile(src).metadata.row_group(row_group)
    data = bytearray(open(src, "rb").read())
    for c in range(group.num_columns):
        chunk = group.column(c)
        start = chunk.dictionary_page_offset or chunk.data_page_offset
        data[start : start + 32] = b"\xff" * 32
    with open(dst, "wb") as f:
        f.write(bytes(data))
