"""The end-to-end scenario's data, shared by the stack and its reference (the embedded default).

The simulated feed ends today (UTC): declarative automation builds only the latest daily partition
(`AutomationCondition.eager()` looks at the latest time window), so the day that arrives during
the scenario must be yesterday for automation to build its features, as it does in production
every morning. The days before it are the history a new deployment backfills; today's
transactions are the live traffic the replicas score (they land in landing only tomorrow).

One day of the history is delivered again with yesterday: a second copy of its first file (the
rows identical), which ingestion must take in without duplicating a row.

`fingerprints` is what "nothing lost or duplicated" is measured by: row counts and content hashes
of bronze, the features, the training set and the inference log, the same way on both sides.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from ml_assets.lib.settings import environment_without_settings

HISTORY_DAYS = 13
TRANSACTIONS_PER_DAY = 300
SEED = 7
# The redelivered day: early in the history, so its features are not yesterday's.
REDELIVERED_INDEX = 3
# Small fits and gates this small world passes: the scenario is about the topology, not the
# model. The stack's retraining run and the reference's `make run` take the same config, so the
# training sets and models (deterministic) are the same on both.
RETRAINING = {
    "ops": {
        "training_set": {"config": {"holdout_days": 2, "validation_days": 1}},
        "fraud_model": {"config": {"n_trials": 1, "num_boost_round": 80}},
    },
    "resources": {"quality_gates": {"config": {"min_roc_auc": 0.5, "min_pr_auc": 0.01, "max_ece": 1.0}}},
}
FEEDS = ("transactions", "labels")
# Columns that say when, how fast or under which request id something was recorded, not what:
# left out of the inference log's hash (the traffic runs at another time, on another load, on
# each side).
WHEN_COLUMNS = ("request_id", "scored_at", "scored_date", "latency_ms")


@dataclass(frozen=True)
class World:
    """A simulated feed in `folder`: `feed/` (every landing folder), `truth/` (the oracle)."""

    folder: Path
    today: date

    @property
    def days(self) -> list[date]:
        return [self.today - timedelta(days=HISTORY_DAYS + 1 - i) for i in range(HISTORY_DAYS + 1)]

    @property
    def yesterday(self) -> date:
        return self.today - timedelta(days=1)

    @property
    def history(self) -> tuple[date, date]:
        return self.days[0], self.today - timedelta(days=2)

    @property
    def redelivered(self) -> date:
        return self.days[REDELIVERED_INDEX]

    def _folders(self, days) -> list[Path]:
        return [
            self.folder / "feed" / feed / f"date={d}"
            for feed in FEEDS
            for d in days
            if (self.folder / "feed" / feed / f"date={d}").exists()
        ]

    def deliver_history(self, landing: Path) -> None:
        """Every landing folder up to the day before yesterday."""
        _copy(self._folders([d for d in self.days if d < self.yesterday]), landing, self.folder / "feed")

    def deliver_yesterday(self, landing: Path) -> None:
        """Yesterday's folders, and a second copy of the redelivered day's first file."""
        _copy(self._folders([self.yesterday]), landing, self.folder / "feed")
        day = landing / "transactions" / f"date={self.redelivered}"
        first = sorted(day.glob("*.csv*"))[0]
        copy = day / f"redelivered-{first.name}"
        shutil.copyfile(first, copy.with_suffix(copy.suffix + ".tmp"))
        copy.with_suffix(copy.suffix + ".tmp").rename(copy)  # as upstream lands files

    def deliver_all(self, landing: Path) -> None:
        """The landing zone as it is at the scenario's end (the reference's)."""
        self.deliver_history(landing)
        self.deliver_yesterday(landing)

    def traffic(self) -> list[dict[str, str]]:
        """Today's transactions, as the landing contract's text, in event-time order (rows the
        contract rejects, the simulator's deliberately broken ones, go too: they must get a 4xx)."""
        rows = []
        for path in sorted((self.folder / "feed" / "transactions" / f"date={self.today}").glob("*.csv*")):
            raw = path.read_bytes()
            text = (gzip.decompress(raw) if path.name.endswith(".gz") else raw).decode("utf-8-sig")
            rows += list(csv.DictReader(io.StringIO(text)))
        return sorted(rows, key=lambda r: (r.get("event_time") or "", r.get("transaction_id") or ""))


def simulate(folder: Path, today: date | None = None) -> World:
    """The feed for the scenario, written by `python -m ml_assets.simulate` into `folder`."""
    today = today or datetime.now(UTC).date()
    world = World(folder, today)
    env = environment_without_settings() | {
        "ML_ASSETS_DATA_DIR": str(folder), "ML_ASSETS_LANDING_DIR": str(folder / "feed"),
    }  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "ml_assets.simulate", "--start", str(world.days[0]),
         "--days", str(HISTORY_DAYS + 2), "--transactions-per-day", str(TRANSACTIONS_PER_DAY),
         "--fraud-rate", "0.03", "--drift-day", "-1", "--seed", str(SEED)],
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    # Labels made today land tomorrow, with today's transactions.
    shutil.rmtree(folder / "feed" / "labels" / f"date={today}", ignore_errors=True)
    (folder / "today").write_text(str(today))  # for the reference's process
    return world


def _copy(folders: list[Path], landing: Path, feed_root: Path) -> None:
    for folder in folders:
        target = landing / folder.relative_to(feed_root)
        shutil.copytree(folder, target, dirs_exist_ok=True)


# --- what "nothing lost or duplicated" is measured by ----------------------------------------------
def _digest(frame) -> dict:
    """Row count and a SHA-256 of the frame's rows, columns sorted by name and rows by every
    column, written as CSV (floats at full precision)."""
    columns = sorted(frame.columns)
    ordered = frame.select(columns).sort(columns, nulls_last=True)
    return {"rows": ordered.height, "sha256": hashlib.sha256(ordered.write_csv().encode()).hexdigest()}


def tables_of(
    lake_uri: str, storage_options: dict[str, str], warehouse: Path, training_version: int | None = None
) -> dict:
    """{name: frame} of bronze, the features, the training set (version `training_version`, by
    default the latest) and the inference log (less WHEN_COLUMNS)."""
    import duckdb
    import polars as pl

    from ml_assets.lib import tables

    def delta(table: str, version: int | None = None):
        return pl.read_delta(f"{lake_uri}/{table}", version=version, storage_options=storage_options or None)

    out = {name: delta(table) for name, table in (
        ("bronze/transactions", tables.BRONZE["transactions"]), ("bronze/labels", tables.BRONZE["labels"]),
    )}  # fmt: skip
    out["training_set"] = delta(tables.TRAINING_SET, training_version)
    out["inference_log"] = delta(tables.INFERENCE_LOG).drop(WHEN_COLUMNS, strict=False)
    with duckdb.connect(str(warehouse), read_only=True) as con:
        out["transaction_features"] = con.sql("select * from transaction_features").pl()
    return out


def fingerprints(*where, **training_version) -> dict[str, dict]:
    """{table: {"rows", "sha256"}} of `tables_of(*where, **training_version)`."""
    return {name: _digest(frame) for name, frame in tables_of(*where, **training_version).items()}


def differences(ours, theirs) -> str:
    """What tells two frames apart: rows only in one of them (a few of each), by every column."""
    columns = sorted(set(ours.columns) | set(theirs.columns))
    if set(ours.columns) != set(theirs.columns):
        return f"columns differ: {sorted(set(ours.columns) ^ set(theirs.columns))}"
    ours, theirs = ours.select(columns), theirs.select(columns)
    only_ours = ours.join(theirs, on=columns, how="anti", nulls_equal=True)
    only_theirs = theirs.join(ours, on=columns, how="anti", nulls_equal=True)
    return (
        f"{ours.height} rows against {theirs.height}; {only_ours.height} only here, e.g.\n"
        f"{only_ours.head(3).to_dicts()}\n{only_theirs.height} only there, e.g.\n"
        f"{only_theirs.head(3).to_dicts()}"
    )


def send_traffic(urls: list[str], rows: list[dict[str, str]]) -> dict[str, int]:
    """One transaction per request, in order, alternating between the replicas at `urls`; returns
    the count of answers by status. Waits for each answer: a card's next transaction is scored
    after its previous one is in the store, as the feed's order says."""
    import httpx

    counts: dict[str, int] = {}
    with httpx.Client(timeout=30) as client:
        for i, row in enumerate(rows):
            answer = client.post(f"{urls[i % len(urls)]}/predict", json=row)
            counts[str(answer.status_code)] = counts.get(str(answer.status_code), 0) + 1
    return counts
