"""RedisKV's spill file: the writes Redis did not take, kept on local disk until it does.

Layout (integers little-endian), one frame per spilled batch, appended in order:

    header   b"GPSPILL2" | file id (8 random bytes; a file created anew gets a new id)
    frame    payload length (u64) | crc32 of the payload (u32) | payload
    payload  key count (u32) | expiry in ms since the epoch (u64) | (key length (u32) | value length (u32) | key | value)*

A process killed while appending leaves a frame cut short at the end of the file. The next append
first truncates the file to the end of its last whole frame, so cut bytes never sit before a later
frame; a reader takes the frames up to the first one that is cut, fails its checksum or does not
parse, so cut or damaged bytes never reach Redis. Every method expects the caller to hold the file
lock (`lock()`), which processes sharing the file take in turns.

Files written before the frames existed (bare payloads, one after another) are still read, and the
first append rewrites such a file framed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import zlib

_MAGIC = b"GPSPILL2"
_HEADER = len(_MAGIC) + 8
_FRAME = struct.Struct("<QI")
_PAYLOAD = struct.Struct("<IQ")
_PAIR = struct.Struct("<II")


class SpillFile:
    """The batches spilled to `path`: append one durably, read them all back, remove the file."""

    def __init__(self, path: str):
        self.path = path
        # (file id, offset): the bytes before offset were whole frames when this process last looked,
        # so an append only checks what other processes wrote after them.
        self._checked: tuple[bytes, int] | None = None

    @contextlib.contextmanager
    def lock(self):
        """The file's lock across processes (a separate `.lock` file, so the spill file can be replaced)."""
        with open(self.path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def append(self, pairs: list[tuple[bytes, bytes]], expires_ms: int) -> int:
        """Append one batch and fsync it; returns how many bytes of a cut batch were dropped first."""
        frame = _frame(pairs, expires_ms)
        try:
            f = open(self.path, "r+b")
        except FileNotFoundError:
            self._create([], frame)
            return 0
        with f:
            head, size = f.read(_HEADER), os.fstat(f.fileno()).st_size
            if len(head) < _HEADER or head[: len(_MAGIC)] != _MAGIC:  # the format before frames
                batches, end = _bare_batches(head + f.read())
                self._create(batches, frame)
                return size - end
            file_id = head[len(_MAGIC) :]
            start = self._checked[1] if self._checked and self._checked[0] == file_id else _HEADER
            start = start if start <= size else _HEADER
            f.seek(start)
            end = start + _frames(f.read())[1]
            if end < size:
                f.truncate(end)
            f.seek(end)
            f.write(frame)
            f.flush()
            os.fsync(f.fileno())
        self._checked = (file_id, end + len(frame))
        return size - end

    def read(self) -> tuple[list[tuple[int, list[tuple[bytes, bytes]]]], int]:
        """([(expiry in ms, [(key, value)])] of the whole batches, bytes dropped after them); none if no file."""
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return [], 0
        if len(data) >= _HEADER and data.startswith(_MAGIC):
            batches, end = _frames(data[_HEADER:])
            return batches, len(data) - _HEADER - end
        batches, end = _bare_batches(data)
        return batches, len(data) - end

    def drop_keys(self, keys: set[bytes]) -> int:
        """Remove `keys` from the spilled batches (so their replay cannot bring them back); how many pairs went."""
        batches, _ = self.read()
        kept = [(expires_ms, [(k, v) for k, v in pairs if k not in keys]) for expires_ms, pairs in batches]
        dropped = sum(len(pairs) for _, pairs in batches) - sum(len(pairs) for _, pairs in kept)
        if dropped:
            kept = [(expires_ms, pairs) for expires_ms, pairs in kept if pairs]
            if kept:
                self._create(kept, b"")
            else:
                self.remove()
        return dropped

    def remove(self) -> None:
        os.remove(self.path)
        self._checked = None

    def _create(self, batches, frame: bytes) -> None:
        """A new file of `batches` then `frame` (b"": none), in place of any old one at once (written
        aside, then renamed)."""
        file_id = os.urandom(8)
        data = b"".join([_MAGIC, file_id, *(_frame(pairs, expires_ms) for expires_ms, pairs in batches), frame])
        aside = self.path + ".new"
        with open(aside, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(aside, self.path)
        directory = os.open(os.path.dirname(self.path) or ".", os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a power cut
        finally:
            os.close(directory)
        self._checked = (file_id, len(data))


def _frame(pairs: list[tuple[bytes, bytes]], expires_ms: int) -> bytes:
    parts = [_PAYLOAD.pack(len(pairs), expires_ms)]
    for k, v in pairs:
        parts += [_PAIR.pack(len(k), len(v)), k, v]
    payload = b"".join(parts)
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def _frames(data: bytes) -> tuple[list, int]:
    """(the batches of the whole, intact frames at the start of `data`, where they end)."""
    batches, at = [], 0
    while len(data) - at >= _FRAME.size:
        length, crc = _FRAME.unpack_from(data, at)
        payload = data[at + _FRAME.size : at + _FRAME.size + length]
        if len(payload) < length or zlib.crc32(payload) != crc:
            break
        found, end = _bare_batches(payload, most=1)
        if len(found) != 1 or end != length:
            break
        batches += found
        at += _FRAME.size + length
    return batches, at


def _bare_batches(data: bytes, most: int | None = None) -> tuple[list, int]:
    """(the whole payloads at the start of `data`, up to `most`, where they end).

    Every length is checked against what is left, so a payload cut short is left over, never read.
    """
    batches, at = [], 0
    while len(data) - at >= _PAYLOAD.size and (most is None or len(batches) < most):
        count, expires_ms = _PAYLOAD.unpack_from(data, at)
        end, pairs = at + _PAYLOAD.size, []
        for _ in range(count):
            if len(data) - end < _PAIR.size:
                return batches, at
            kl, vl = _PAIR.unpack_from(data, end)
            if len(data) - end - _PAIR.size < kl + vl:
                return batches, at
            pairs.append((data[end + 8 : end + 8 + kl], data[end + 8 + kl : end + 8 + kl + vl]))
            end += _PAIR.size + kl + vl
        batches.append((expires_ms, pairs))
        at = end
    return batches, at
