"""A redis-server of our own, for the online store's tests and its bench: on a free loopback port,
durable as production must run it (append-only, fsync at every write), nothing but its AOF on disk,
stopped by its PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def started(folder: Path) -> RedisServer:
    """A running RedisServer in `folder`; skips the test where redis-server is not installed (fails
    it under CI, which must test both engines)."""
    import shutil

    import pytest

    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):  # CI's own variable, not a setting of the project
            pytest.fail("redis-server is not installed, and CI must test both engines (`make redis-server`)")
        pytest.skip("redis-server is not installed (`make redis-server` installs it)")
    server = RedisServer(folder)
    server.start()
    return server


class RedisServer:
    """A redis-server of our own: durable as production must run it, nothing but the AOF on disk."""

    def __init__(self, folder: Path):
        self.folder = folder
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.folder),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--logfile", "redis.log"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # until it accepts connections (and has loaded the AOF)
            if self._pong():
                return
            assert self.proc.poll() is None, (self.folder / "redis.log").read_text()
            time.sleep(0.02)
        raise AssertionError("redis-server did not start")

    def _pong(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")  # "-LOADING ..." while it replays the AOF
        except OSError:
            return False

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            self.proc.wait()
