"""`python bench/in_memory_processes.py PORT N`, run with the in-memory service's tree (the serving
bench's baseline) first on PYTHONPATH: that service as N processes on one port, each listening on
a socket of its own (SO_REUSEPORT, as `--workers` does; the kernel spreads connections across
them).

Each process keeps its own memory, so each sees only the transactions sent to it: not a service
anyone should run. It is the ceiling of what a second process gives on this box at the bench's
load, with no online store at all: what the engines' 2-worker ratio is to be read against.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import sys
from pathlib import Path


def serve(port: int) -> None:
    """One process: the service as the baseline's own entry point builds it, on a socket of its own."""
    import uvicorn

    from ml_assets.serving.app import create_app
    from ml_assets.serving.service import Service
    from ml_assets.serving.settings import ServingSettings

    sys.setswitchinterval(0.0005)  # as the baseline's entry point sets it
    sock = _current_workers().reuse_port_socket("127.0.0.1", port)
    app = create_app(Service(ServingSettings.from_env()))
    # uvicorn listens once the app has started (the service's history loaded): a listening socket
    # is a ready process.
    uvicorn.Server(uvicorn.Config(app, access_log=False, log_level="warning")).run(sockets=[sock])


def _current_workers():
    """This tree's ml_assets.serving.workers (the baseline's `ml_assets` is the one imported here),
    loaded from its file: the socket `--workers` gives each worker."""
    path = Path(__file__).resolve().parents[1] / "ml_assets" / "serving" / "workers.py"
    spec = importlib.util.spec_from_file_location("current_serving_workers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    port, n = int(sys.argv[1]), int(sys.argv[2])
    processes = [multiprocessing.Process(target=serve, args=(port,)) for _ in range(n)]
    for p in processes:
        p.start()
    for p in processes:
        p.join()
