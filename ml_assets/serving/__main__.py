"""Start the scoring service: `python -m ml_assets.serving [--host H] [--port P] [--workers N]`
(`make serve WORKERS=N`).

Everything else comes from the environment (ml_assets.serving.settings): the data root, the
registry, the online store, the model name and the service's knobs. With `--workers N`, uvicorn
runs N processes accepting on the one port; they share card histories and decisions through the
online store (SQLite serializes their writes; Redis is shared by replicas on other hosts too).
"""

from __future__ import annotations

import argparse
import logging


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    ap = argparse.ArgumentParser(prog="python -m ml_assets.serving", description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--workers", type=int, default=1, help="processes serving the port (default 1)")
    ap.add_argument(
        "--access-log", action="store_true", help="log every request (off: the inference log has them)"
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # An import string and a factory: with several workers, uvicorn starts each process fresh and
    # each builds its own app (a Service, its registry poller and its store connection).
    uvicorn.run(
        "ml_assets.serving.app:app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        access_log=args.access_log,
        log_level="info",
    )


if __name__ == "__main__":
    main()
