"""The features run for one new day at day 60 of history against the same at day 5.

Incremental models read only the lookback each window needs, so a day should cost about the same
however long the history is. Both runs are the `dbt build` the features asset runs, for one day
(best of two), after the earlier days were built (not timed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

from bench.common import line, save

START = date(2026, 1, 1)
DAYS = 61
PER_DAY = 10_000


def _dbt(env: dict, first: date, last: date) -> tuple[float, float]:
    """(wall of the whole `dbt build`, seconds dbt spent in the transaction_features model)."""
    from ml_assets.lib.dbt_project import DBT_PROJECT_DIR

    dbt = str(Path(sys.executable).parent / "dbt")
    from ml_assets.lib import paths

    days = json.dumps({"min_date": first.isoformat(), "max_date": last.isoformat()} | paths.dbt_vars())
    t0 = time.perf_counter()
    subprocess.run([dbt, "build", "--profiles-dir", ".", "--vars", days, "--quiet"], cwd=DBT_PROJECT_DIR,
                   env=env, check=True, capture_output=True)  # fmt: skip
    wall = time.perf_counter() - t0
    results = json.loads((DBT_PROJECT_DIR / "target" / "run_results.json").read_text())["results"]
    model = next(r for r in results if r["unique_id"].endswith(".transaction_features"))
    return wall, model["execution_time"]


def main() -> dict:
    import dagster as dg

    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "ML_ASSETS_DATA_DIR": tmp, "DAGSTER_HOME": f"{tmp}/dagster_home"}
        os.makedirs(env["DAGSTER_HOME"])
        Path(env["DAGSTER_HOME"], "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        simulate = ["--days", str(DAYS), "--transactions-per-day", str(PER_DAY)]
        subprocess.run(
            [sys.executable, "-m", "ml_assets.simulate", *simulate], env=env, check=True, capture_output=True
        )
        os.environ.update(ML_ASSETS_DATA_DIR=tmp, DAGSTER_HOME=env["DAGSTER_HOME"])
        from ml_assets.definitions import defs

        last = START + timedelta(days=DAYS - 1)
        tags = {
            "dagster/asset_partition_range_start": START.isoformat(),
            "dagster/asset_partition_range_end": str(last),
        }
        defs().resolve_job_def("ingestion_job").execute_in_process(
            instance=dg.DagsterInstance.get(),
            tags=tags,
            raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},  # the figures only
        )
        figures = {}
        for n in (5, 60):
            day = START + timedelta(days=n)
            _dbt(env, START, day - timedelta(days=1))  # the history before the day, not timed
            figures[n] = min(_dbt(env, day, day) for _ in range(2))
    (build5, sql5), (build60, sql60) = figures[5], figures[60]
    print(f"features for one new day, {PER_DAY:,} transactions a day (best of 2)")
    print(line("dbt build, day 5 of history", build5, "s"))
    print(line("dbt build, day 60 of history", build60, "s", build5, "day 5"))
    print(line("transaction_features SQL, day 5", sql5, "s"))
    print(line("transaction_features SQL, day 60", sql60, "s", sql5, "day 5"))
    result = {"build_day5_s": build5, "build_day60_s": build60, "sql_day5_s": sql5, "sql_day60_s": sql60}
    save("features", result)
    return result


if __name__ == "__main__":
    main()
