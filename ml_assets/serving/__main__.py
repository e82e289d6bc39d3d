"""Start the scoring service: `python -m ml_assets.serving [--host H] [--port P] [--workers N]
[--insecure]` (`make serve WORKERS=N`).

Everything else comes from the environment (ml_assets.serving.settings): the data root, the
registry, the online store, the model name, the tokens and the service's knobs. With `--workers N`,
N processes accept on the one port, each on a listening socket of its own (SO_REUSEPORT: the kernel
spreads connections across them; ml_assets.serving.workers); they share card histories and
decisions through the online store (SQLite serializes their writes; Redis is shared by replicas on
other hosts too).

Bound to loopback (the default), no token is needed. Bound anywhere else, it refuses to start
without tokens (ml_assets.serving.auth) unless `--insecure` is given.
"""

from __future__ import annotations

import argparse
import logging
import logging.config

APP = "ml_assets.serving.app:app_from_env"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m ml_assets.serving", description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--workers", type=int, default=1, help="processes serving the port (default 1)")
    ap.add_argument(
        "--access-log", action="store_true", help="log every request (off: the inference log has them)"
    )
    ap.add_argument(
        "--insecure",
        action="store_true",
        help="serve off loopback without tokens (anyone who reaches the port may score and operate)",
    )
    args = ap.parse_args(argv)
    # Checked before anything heavy is imported: a wrong setup fails in a fraction of a second.
    from ml_assets.serving import auth

    try:
        tokens = auth.read_tokens()
    except auth.AuthConfigError as e:
        ap.exit(2, f"{ap.prog}: {e}\n")
    if refused := auth.refusal(args.host, tokens, args.insecure):
        ap.exit(2, f"{ap.prog}: {refused}\n")

    import uvicorn

    from ml_assets.serving.surface import LOG_CONFIG, UVICORN

    logging.config.dictConfig(LOG_CONFIG)
    if not any(tokens.values()) and not auth.is_loopback(args.host):
        logging.getLogger(__name__).warning("serving on %s without authentication (--insecure)", args.host)
    # An import string and a factory: with several workers, uvicorn starts each process fresh and
    # each builds its own app (a Service, its registry poller and its store connection).
    options = dict(
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        access_log=args.access_log,
        log_level="info",
        log_config=LOG_CONFIG,  # every worker's, too
        **UVICORN,
    )
    if args.workers == 1:
        uvicorn.run(APP, **options)
    else:
        from ml_assets.serving.workers import ReusePortWorkers

        ReusePortWorkers(uvicorn.Config(APP, **options)).run()


if __name__ == "__main__":
    main()
