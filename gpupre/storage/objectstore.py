"""A real S3-compatible object store on loopback, with the latency of a remote one.

`LocalObjectStore` starts moto's S3 server in a child process behind a TCP proxy that holds each
request for `latency_ms` (time to first byte) and, optionally, paces responses to
`bandwidth_mib_s` per connection. Datasets on it are read through `pyarrow.fs.S3FileSystem`, the
same code path as a cloud bucket, so request counts and the cost of each request are real::

    with gp.storage.LocalObjectStore(latency_ms=20) as store:
        fs = store.filesystem()
        store.create_bucket("data")
        ds = gp.Dataset("data/train", filesystem=fs)

Needs `moto[server]` (`pip install gpupre[s3]`).
"""

from __future__ import annotations

import argparse
import math
import os
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pyarrow.fs as pafs

from ..errors import BackendUnavailable, ConfigError

__all__ = ["LocalObjectStore"]

_KEY = "gpupre-local"  # moto accepts any credentials


class LocalObjectStore:
    """moto's S3 server in a child process, behind a latency-injecting proxy on loopback."""

    def __init__(self, latency_ms: float = 0.0, bandwidth_mib_s: float | None = None, start_timeout_s: float = 60.0):
        """Raises ConfigError: latency_ms < 0, or bandwidth_mib_s or start_timeout_s not > 0."""
        if not (_is_number(latency_ms) and latency_ms >= 0):
            raise ConfigError(f"LocalObjectStore {latency_ms=} must be a number >= 0 (ms per request), such as 20")
        if bandwidth_mib_s is not None and not (_is_number(bandwidth_mib_s) and bandwidth_mib_s > 0):
            raise ConfigError(f"LocalObjectStore {bandwidth_mib_s=} must be None (unpaced) or a number > 0")
        if not (_is_number(start_timeout_s) and start_timeout_s > 0):
            raise ConfigError(f"LocalObjectStore {start_timeout_s=} must be a number of seconds > 0, such as 60")
        self.latency_ms, self.bandwidth_mib_s = float(latency_ms), bandwidth_mib_s
        self.start_timeout_s = start_timeout_s
        self.endpoint: str | None = None
        self._process: subprocess.Popen | None = None

    def start(self) -> LocalObjectStore:
        """Start the server; returns once it accepts requests (at once when it is running already).

        Raises:
            BackendUnavailable: moto is not installed or the server did not come up.
        """
        if self._process is not None and self._process.poll() is None:
            return self  # a second server would leave the first running, unstopped
        self.stop()  # what a server that exited left open
        command = [sys.executable, "-m", __name__, "--latency-ms", str(self.latency_ms)]
        if self.bandwidth_mib_s:
            command += ["--bandwidth-mib-s", str(self.bandwidth_mib_s)]
        self._log = tempfile.TemporaryFile("w+")  # the server logs every request: never a pipe that fills
        # the child exits when its stdin closes: when this process stops, even killed
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                         text=True)  # fmt: skip
        ready, _, _ = select.select([self._process.stdout], [], [], self.start_timeout_s)
        line = self._process.stdout.readline() if ready else ""
        if not line.startswith("ready "):
            self._log.seek(0)
            detail = self._log.read()[-2000:]
            self.stop()
            raise BackendUnavailable(
                f"the local S3 server did not start within {self.start_timeout_s}s ({detail.strip() or 'no output'}); "
                "install moto's server with `pip install 'moto[server]'`"
            )
        self.endpoint = f"127.0.0.1:{int(line.split()[1])}"
        return self

    def filesystem(self, **options) -> pafs.S3FileSystem:
        """A `pyarrow.fs.S3FileSystem` on this store; `options` pass through and override the
        defaults (credentials, endpoint, scheme, region)."""
        if self.endpoint is None:
            raise BackendUnavailable("the local S3 server is not running; call start() or use it as a context manager")
        defaults = dict(access_key=_KEY, secret_key=_KEY, endpoint_override=self.endpoint, scheme="http",
                        region="us-east-1")  # fmt: skip
        return pafs.S3FileSystem(**{**defaults, **options})

    def create_bucket(self, name: str) -> None:
        """Create the bucket `name` (nothing happens when it exists).

        Raises:
            BackendUnavailable: the server is not running.
            ConfigError: the store refuses the name.
        """
        filesystem = self.filesystem(allow_bucket_creation=True)
        try:
            filesystem.create_dir(name)
        except OSError as e:
            raise ConfigError(
                f"bucket {name!r} cannot be created ({e}); an S3 bucket name is 3 to 63 lowercase letters, digits, "
                "dots and hyphens, such as 'train-data'"
            ) from e

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._process is not None:
            self._process.stdin.close()
            self._process.stdout.close()
            self._log.close()
        self.endpoint = None

    def __enter__(self) -> LocalObjectStore:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _serve(latency_ms: float, bandwidth_mib_s: float | None) -> None:
    from moto.server import ThreadedMotoServer

    threading.Thread(target=_exit_with_parent, daemon=True).start()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    upstream = moto.get_host_and_port()
    listener = socket.create_server(("127.0.0.1", 0))
    print(f"ready {listener.getsockname()[1]}", flush=True)
    while True:
        client, _ = listener.accept()
        threading.Thread(target=_relay, args=(client, upstream, latency_ms / 1e3, bandwidth_mib_s), daemon=True).start()


def _exit_with_parent() -> None:
    sys.stdin.read()  # returns at end of file: the parent closed the pipe or is gone
    os._exit(0)


def _relay(client: socket.socket, upstream, latency_s: float, bandwidth_mib_s: float | None) -> None:
    """Forward one connection; a request is held for the latency when it starts (the client sends
    after the server has answered), and responses are paced to the bandwidth."""
    server = socket.create_connection(upstream)
    for sock in (client, server):  # a relay must not add Nagle's delays to the injected one
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    answered = True
    try:
        while True:
            readable, _, _ = select.select([client, server], [], [])
            for sock in readable:
                data = sock.recv(1 << 16)
                if not data:
                    return
                if sock is client:
                    if answered and latency_s:
                        time.sleep(latency_s)
                    answered = False
                    server.sendall(data)
                else:
                    answered = True
                    if bandwidth_mib_s:
                        time.sleep(len(data) / (bandwidth_mib_s * (1 << 20)))
                    client.sendall(data)
    except OSError:
        return
    finally:
        client.close()
        server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="moto's S3 server behind a latency-injecting proxy")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--bandwidth-mib-s", type=float, default=None)
    args = parser.parse_args()
    _serve(args.latency_ms, args.bandwidth_mib_s)
