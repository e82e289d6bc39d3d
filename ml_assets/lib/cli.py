"""What the project's commands (`make rollback`, `make retrain`, `python -m ml_assets.run`) share:
INFO logging, without the libraries' own chatter."""

from __future__ import annotations

import logging
import resource

# Their INFO lines (a new store's table migrations, model loading) say nothing about what was asked.
QUIET_LOGGERS = ("mlflow", "alembic")


def configure_logging() -> None:
    """INFO on stderr, for this command's own loggers. MLflow sets its logger's level when it is
    imported, so it is imported first and quietened after."""
    import mlflow  # noqa: F401  (see above)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def cpu_seconds() -> float:
    """User + system CPU seconds of this process (every thread) and of its children that ended
    (dbt). On a shared box wall time is mostly waiting for a core; this is what the work cost."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
