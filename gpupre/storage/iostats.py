"""I/O accounting: a `pyarrow.fs` filesystem that counts read requests and bytes."""

from __future__ import annotations

import threading

import pyarrow as pa
import pyarrow.fs as pafs

from ..errors import ConfigError

__all__ = ["CountingFileSystem", "HandlerFileSystem"]


class DelegatingHandler(pafs.FileSystemHandler):
    """A `pyarrow.fs.PyFileSystem` handler that hands every call to `base`; subclasses override.

    Streams are opened on `base` with compression=None: the `PyFileSystem` around the handler
    already compresses or decompresses as its caller asks, and doing it twice corrupts the bytes.

    Filesystems travel to loader workers: a handler arrives there with a new lock, its `counters`
    at zero (they count the reads of one process) and its `per_process` state set to None.
    """

    counters: tuple[str, ...] = ()
    per_process: tuple[str, ...] = ()

    def __init__(self, base: pafs.FileSystem):
        if not isinstance(base, pafs.FileSystem):
            raise ConfigError(
                f"the filesystem to wrap must be a pyarrow.fs.FileSystem, got {type(base).__name__} "
                f"({base!r}); pass one such as pyarrow.fs.S3FileSystem(...) or LocalObjectStore.filesystem()"
            )
        self.base = base
        self.lock = threading.Lock()
        for name in self.counters:
            setattr(self, name, 0)
        for name in self.per_process:
            setattr(self, name, None)

    def reset(self) -> None:
        with self.lock:
            for name in self.counters:
                setattr(self, name, 0)

    def __getstate__(self):
        skip = {"lock", *self.counters, *self.per_process}
        return {k: v for k, v in self.__dict__.items() if k not in skip}

    def __setstate__(self, state):
        self.__dict__.update(state, lock=threading.Lock())
        for name in self.counters:
            setattr(self, name, 0)
        for name in self.per_process:
            setattr(self, name, None)

    def get_type_name(self):
        return self.base.type_name

    def open_input_file(self, path):
        return self.base.open_input_file(path)

    def open_input_stream(self, path):
        return self.base.open_input_stream(path, compression=None)

    def normalize_path(self, path):
        return self.base.normalize_path(path)

    def get_file_info(self, paths):
        return self.base.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.base.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.base.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.base.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.base.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        self.base.delete_dir_contents("/", accept_root_dir=True)

    def delete_file(self, path):
        self.base.delete_file(path)

    def move(self, src, dest):
        self.base.move(src, dest)

    def copy_file(self, src, dest):
        self.base.copy_file(src, dest)

    def open_output_stream(self, path, metadata):
        return self.base.open_output_stream(path, compression=None, metadata=metadata)

    def open_append_stream(self, path, metadata):
        return self.base.open_append_stream(path, compression=None, metadata=metadata)


class HandlerFileSystem(pafs.PyFileSystem):
    """A `PyFileSystem` whose subclass (with its properties and methods) survives pickling."""

    def __reduce__(self):
        return _rebuild, (type(self), self.handler)


def _rebuild(cls, handler):
    fs = cls.__new__(cls)
    pafs.PyFileSystem.__init__(fs, handler)
    return fs


class _CountingHandler(DelegatingHandler):
    counters = ("read_requests", "bytes_read")

    def count(self, nbytes: int) -> None:
        with self.lock:
            self.read_requests += 1
            self.bytes_read += nbytes

    def get_type_name(self):
        return "counting+" + self.base.type_name

    def open_input_file(self, path):
        return pa.PythonFile(_CountingFile(self.base.open_input_file(path), self), mode="r")

    def open_input_stream(self, path):
        return pa.PythonFile(_CountingFile(super().open_input_stream(path), self), mode="r")


class _CountingFile:
    """The file-object side of a counted file: every read is one request."""

    def __init__(self, raw, handler: _CountingHandler):
        self.raw, self.handler = raw, handler
        self.closed = False

    def read(self, nbytes=-1):
        data = self.raw.read(nbytes)
        self.handler.count(len(data))
        return data

    def seek(self, offset, whence=0):
        return self.raw.seek(offset, whence)

    def tell(self):
        return self.raw.tell()

    def size(self):
        return self.raw.size()

    def readable(self):
        return True

    def seekable(self):
        return self.raw.seekable()

    def close(self):
        self.closed = True
        self.raw.close()


class CountingFileSystem(HandlerFileSystem):
    """Wraps any `pyarrow.fs.FileSystem` and counts read requests and bytes read through it.

    Usage::

        fs = CountingFileSystem()            # local files
        ds = gp.Dataset(path, features=..., filesystem=fs)
        ...; fs.bytes_read, fs.read_requests; fs.reset()
    """

    def __init__(self, base: pafs.FileSystem | None = None):
        super().__init__(_CountingHandler(base or pafs.LocalFileSystem()))

    @property
    def bytes_read(self) -> int:
        return self.handler.bytes_read

    @property
    def read_requests(self) -> int:
        return self.handler.read_requests

    def reset(self) -> None:
        self.handler.reset()
