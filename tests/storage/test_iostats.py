"""CountingFileSystem: a pyarrow filesystem that counts read requests and bytes."""

import gzip
import os

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

import gpupre as gp
from gpupre.storage import CountingFileSystem


def test_counts_every_byte_read_and_resets(tmp_path):
    path = str(tmp_path / "blob.bin")
    with open(path, "wb") as f:
        f.write(bytes(range(256)) * 40)
    fs = CountingFileSystem()
    assert (fs.bytes_read, fs.read_requests) == (0, 0)
    with fs.open_input_stream(path) as f:
        assert f.read() == bytes(range(256)) * 40
    assert fs.bytes_read == 10_240 and fs.read_requests >= 1
    fs.reset()
    assert (fs.bytes_read, fs.read_requests) == (0, 0)
    with fs.open_input_file(path) as f:
        f.seek(1000)
        assert f.read(24) == bytes(range(232, 256))
        assert f.read(10) == bytes(range(10))
    assert fs.bytes_read == 34 and fs.read_requests == 2


def test_reads_parquet_like_the_base_filesystem(synth_file):
    fs = CountingFileSystem()
    table = pq.read_table(synth_file, columns=["dense_000", "label"], filesystem=fs)
    assert table.equals(pq.read_table(synth_file, columns=["dense_000", "label"]))
    assert 0 < fs.bytes_read <= os.path.getsize(synth_file)


def test_passes_metadata_calls_to_the_base(synth_dir, tmp_path):
    fs = CountingFileSystem(pafs.LocalFileSystem())
    infos = fs.get_file_info(pafs.FileSelector(synth_dir, recursive=True))
    assert sorted(i.base_name for i in infos) == [f"part-0000{i}.parquet" for i in range(3)]
    assert fs.get_file_info(str(tmp_path / "nothing")).type == pafs.FileType.NotFound
    with fs.open_output_stream(str(tmp_path / "out.bin")) as f:
        f.write(b"abc")
    assert (tmp_path / "out.bin").read_bytes() == b"abc" and fs.bytes_read == 0


def test_a_base_that_is_not_a_filesystem_is_a_config_error():
    with pytest.raises(gp.ConfigError, match=r"must be a pyarrow\.fs\.FileSystem, got str \('s3'\)"):
        CountingFileSystem("s3")


WRAPPERS = {
    "counting": lambda base, root: CountingFileSystem(base),
    "cached": lambda base, root: gp.storage.CachedFileSystem(base, root, 1 << 20),
}


@pytest.mark.parametrize("wrapper", sorted(WRAPPERS))
def test_gzip_files_are_compressed_once_as_the_base_filesystem_does(tmp_path, wrapper):
    local = pafs.LocalFileSystem()
    fs = WRAPPERS[wrapper](local, tmp_path / "cache")
    path = str(tmp_path / "x.csv.gz")
    with fs.open_output_stream(path) as f:
        f.write(b"a,b\n1,2\n")
    with fs.open_append_stream(path) as f:
        f.write(b"3,4\n")
    assert gzip.decompress((tmp_path / "x.csv.gz").read_bytes()) == b"a,b\n1,2\n3,4\n"
    with fs.open_input_stream(path) as f:
        assert f.read() == b"a,b\n1,2\n3,4\n"
    with fs.open_input_stream(path, compression=None) as f:
        assert f.read() == (tmp_path / "x.csv.gz").read_bytes()
    pafs.copy_files(path, str(tmp_path / "copy.csv.gz"), source_filesystem=fs, destination_filesystem=local)
    assert (tmp_path / "copy.csv.gz").read_bytes() == (tmp_path / "x.csv.gz").read_bytes()
