"""Ingesting one 1,000,000-row day against a bare `polars.read_csv` of the same file.

Both run in fresh processes, so each peak RSS is its own. The ingestion figure covers reading,
validating with pandera, deduplicating and writing bronze and quarantine to Delta.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from bench.common import line, report_self, run_worker, save

DAY = "2026-01-01"
ROWS = 1_000_000


def _worker(kind: str, root: Path) -> None:
    import polars as pl

    folder = root / "landing" / "transactions" / f"date={DAY}"
    files = sorted(folder.glob("*.csv*"))
    if kind == "read_csv":
        t0 = time.perf_counter()
        rows = sum(pl.read_csv(f).height for f in files)
        report_self(time.perf_counter() - t0, rows=rows)
        return
    import pandera.polars  # noqa: F401  (import cost is not ingestion cost)
    from deltalake import write_deltalake  # noqa: F401

    from ml_assets.defs.resources import LakeResource
    from ml_assets.lib import tables
    from ml_assets.lib.contract import TRANSACTIONS
    from ml_assets.lib.ingest import QUARANTINE_SCHEMA, ingest_partition

    lake = LakeResource(root=str(root / "lake"))
    day = date.fromisoformat(DAY)
    # pandera registers its polars backend (importing hypothesis) on first use: an import cost
    # paid once per process, not an ingestion cost. Pay it before the clock starts.
    warm = root / "warm"
    warm.mkdir()
    (warm / "a.csv").write_bytes(next(folder.glob("*.csv")).read_bytes()[:4096].rsplit(b"\n", 1)[0])
    ingest_partition(TRANSACTIONS, warm, day)
    t0 = time.perf_counter()
    result = ingest_partition(TRANSACTIONS, folder, day)
    written = time.perf_counter()
    lake.write_partitions(
        tables.BRONZE["transactions"], result.bronze, partition_column="event_date", partitions=[day],
        schema=TRANSACTIONS.bronze_schema(),
    )  # fmt: skip
    lake.write_partitions(
        tables.QUARANTINE["transactions"], result.quarantine, partition_column="event_date", partitions=[day],
        schema={**QUARANTINE_SCHEMA, "event_date": pl.Date()},
    )  # fmt: skip
    phases = {**result.seconds_by_phase, "write": time.perf_counter() - written}
    report_self(
        time.perf_counter() - t0, rows=result.bronze.height, quarantined=result.quarantined_rows,
        phases_s={k: round(v, 3) for k, v in phases.items()},
    )  # fmt: skip


def main() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = {**os.environ, "ML_ASSETS_DATA_DIR": str(root)}
        subprocess.run(
            [sys.executable, "-m", "ml_assets.simulate", "--days", "1", "--transactions-per-day", str(ROWS),
             "--files-per-day", "1", "--label-delay", "5"],
            check=True, capture_output=True, env=env,
        )  # fmt: skip
        base = run_worker("bench.ingest", "read_csv", str(root))
        ingest = run_worker("bench.ingest", "ingest", str(root))
    print(f"ingesting one day of {ingest['rows']:,} rows ({ingest['quarantined']} quarantined)")
    print(line("wall", ingest["wall_s"], "s", base["wall_s"], "polars.read_csv"))
    print(line("peak RSS", ingest["peak_rss_mb"], "MB", base["peak_rss_mb"], "polars.read_csv"))
    # What remains, phase by phase (ingestion's own timing, lib/ingest.py): each against the bare read.
    for phase, seconds in ingest["phases_s"].items():
        print(line(f"  {phase}", seconds, "s", base["wall_s"], "polars.read_csv"))
    figures = {"ingest": ingest, "read_csv": base}
    save("ingest", figures)
    return figures


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", nargs=2)
    args = ap.parse_args()
    if args.worker:
        _worker(args.worker[0], Path(args.worker[1]))
    else:
        main()
