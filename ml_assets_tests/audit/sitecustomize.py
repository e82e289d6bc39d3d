"""Loaded by every Python process started with this folder on PYTHONPATH (test_settings): records
each connection to an address off loopback and each file opened for writing outside the allowed
folders, one JSON line per event in $ML_ASSETS_AUDIT_LOG. It never blocks anything: the test
reads the log and asserts it is empty."""

import json
import os
import sys

_LOG = os.environ.get("ML_ASSETS_AUDIT_LOG")
_ALLOWED = tuple(p for p in os.environ.get("ML_ASSETS_AUDIT_ALLOWED", "").split(os.pathsep) if p)
_DEVICES = ("/dev/null", "/dev/shm/", "/dev/tty", "/proc/self/")
_LOCAL_NAMES = {None, "", "localhost", "::1", "0.0.0.0", __import__("socket").gethostname()}


def _record(kind: str, detail: str) -> None:
    with open(_LOG, "a") as out:  # inside an allowed folder: not recorded itself
        out.write(json.dumps({"pid": os.getpid(), "argv": sys.orig_argv[:4], kind: detail}) + "\n")


def _loopback(address) -> bool:
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, bytes):
        host = host.decode()
    return not isinstance(host, str) or host.startswith("127.") or host in ("::1", "localhost", "")


def _writes(mode, flags) -> bool:
    if isinstance(mode, str):
        return any(c in mode for c in "wax+")
    return isinstance(flags, int) and bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND))


def _hook(event: str, args) -> None:
    if event == "socket.getaddrinfo":  # a name looked up is a connection about to be tried
        if not _loopback((args[0],)) and args[0] not in _LOCAL_NAMES:
            _record("lookup", repr(args[0]))
    elif event == "socket.connect":
        sock, address = args
        if sock.family in (2, 10) and not _loopback(address):  # AF_INET, AF_INET6
            _record("connect", repr(address))
    elif event == "open":
        path, mode, flags = args
        if not isinstance(path, str | bytes) or not _writes(mode, flags):
            return
        path = os.path.abspath(os.fsdecode(path))
        if not path.startswith(_ALLOWED + _DEVICES):
            _record("write", path)


if _LOG:
    with open(f"{_LOG}.processes", "a") as out:  # which processes ran audited: the test's control
        out.write(json.dumps({"pid": os.getpid(), "argv": sys.orig_argv[:4]}) + "\n")
    sys.addaudithook(_hook)
