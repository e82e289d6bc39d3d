"""Start the scoring service: `python -m ml_assets.serving [--host H] [--port P]` (`make serve`).

Everything else comes from the environment (ml_assets.serving.settings): the data root, the
registry, the model name and the service's knobs.
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from ml_assets.serving.app import create_app
    from ml_assets.serving.service import Service
    from ml_assets.serving.settings import ServingSettings

    ap = argparse.ArgumentParser(prog="python -m ml_assets.serving", description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument(
        "--access-log", action="store_true", help="log every request (off: the inference log has them)"
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The registry poller and the log writer run Python in threads beside the event loop: hand the
    # GIL back to the loop after 0.5 ms rather than the default 5 ms, or their work shows up as
    # pauses of several ms in request latency.
    sys.setswitchinterval(0.0005)
    settings = ServingSettings.from_env()
    logging.getLogger(__name__).info("settings: %s", settings)
    app = create_app(Service(settings))
    uvicorn.run(app, host=args.host, port=args.port, access_log=args.access_log, log_level="info")


if __name__ == "__main__":
    main()
