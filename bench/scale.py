"""The pipeline at 1M, 5M and 20M transactions: wall time and peak RSS of every stage.

    python -m bench scale                 (every size: about an hour here, and ~10 GB of disk)
    python -m bench.scale --sizes 1 5     (sizes in millions of transactions)

Each size gets a fresh data root with DAYS days of simulated feed (size / DAYS transactions a day),
so the number of partitions, and what they cost each, stays the same and only the volume grows.
Each stage runs in a fresh process, as a run of the location's own job on the data root's Dagster
instance, and is measured from outside: wall time (imports included), and peak RSS of the largest
process in its tree (os.wait4's rusage; dbt runs as a child). Inside, the worker also times the
run itself ("work": imports and loading the definitions excluded). The 1M run is the baseline
of the growth ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

from bench.common import RESULTS, save

DAYS = 20  # 7 holdout + 5 validation days need labels (3 days late), and a few days to train on
SIZES = (1, 5, 20)  # millions of transactions
START = date(2026, 1, 1)
FAST_MODEL = {"n_trials": 2}  # the small trial budget: two Optuna trials, each early-stopped
# stage -> (job, assets of the job it runs (None: all), partitioned over the feed's days)
STAGES = {
    "simulate": None,
    "ingestion": ("ingestion_job", None, True),
    "features": ("features_job", None, True),
    "training_set": ("retraining_job", ["training_set"], False),
    "fraud_model": ("retraining_job", ["fraud_model"], False),
    "model_validation_report": ("retraining_job", ["model_validation_report"], False),
    "promotion": None,  # a promotion-sensor tick and the promotion_job run it asks for
    "monitoring": ("monitoring_job", None, True),
}


def _days() -> tuple[str, str]:
    return START.isoformat(), (START + timedelta(days=DAYS - 1)).isoformat()


def _worker(stage: str) -> None:
    """One stage, in this (fresh) process, on the data root the environment names."""
    import dagster as dg

    from ml_assets.definitions import defs
    from ml_assets.run import QUIET, RANGE_END, RANGE_START

    definitions = defs()
    instance = dg.DagsterInstance.get()
    started = time.perf_counter()
    if stage == "promotion":
        from ml_assets.defs.promotion.sensors import model_promotion_sensor
        from ml_assets.defs.resources import build_resources

        needed = model_promotion_sensor.required_resource_keys
        context = dg.build_sensor_context(
            instance=instance, resources={k: v for k, v in build_resources().items() if k in needed}
        )
        requests = model_promotion_sensor(context).run_requests or []
        if not requests:
            raise SystemExit("the promotion sensor asked for nothing: the model did not pass its gates")
        results = [
            definitions.resolve_job_def("promotion_job").execute_in_process(
                instance=instance, tags=r.tags, run_config=QUIET | r.run_config, raise_on_error=False
            )
            for r in requests
        ]
    else:
        job, assets, partitioned = STAGES[stage]
        first, last = _days()
        config = {"ops": {"fraud_model": {"config": FAST_MODEL}}} if stage == "fraud_model" else {}
        results = [
            definitions.resolve_job_def(job).execute_in_process(
                instance=instance,
                tags={RANGE_START: first, RANGE_END: last} if partitioned else {},
                run_config=QUIET | config,
                asset_selection=[dg.AssetKey(a) for a in assets] if assets else None,
                raise_on_error=False,
            )
        ]
    work = time.perf_counter() - started
    failed = [e.message for r in results for e in r.all_events if e.is_failure]
    if failed:
        raise SystemExit(f"{stage} failed: {failed[:3]}")
    # What explains a stage's cost besides volume: rows written, and how long training ran.
    explained: dict[str, float] = {}
    for event in (e for r in results for e in r.get_asset_materialization_events()):
        metadata = event.materialization.metadata
        for key in ("dagster/row_count", "best_iteration", "train_seconds"):
            if key in metadata:
                explained[key] = explained.get(key, 0) + metadata[key].value
    print(json.dumps({"work_s": round(work, 2)} | explained))


def _measure(cmd: list[str], env: dict[str, str], log: Path) -> dict:
    """Run `cmd` and return its wall time, peak RSS (largest process of its tree) and what it printed
    last as JSON, if anything."""
    with log.open("w") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        # wait4, not wait: its rusage is this child's (with the children it waited for), where
        # getrusage(RUSAGE_CHILDREN) would give the largest of every stage so far.
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
    if proc.returncode:
        raise RuntimeError(
            f"{' '.join(cmd[:4])} failed ({proc.returncode}): see {log}\n{log.read_text()[-2000:]}"
        )
    figures = {"wall_s": round(wall, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}
    last = log.read_text().strip().splitlines()[-1:] or [""]
    if last[0].startswith("{"):
        figures |= json.loads(last[0])
    return figures


def run_size(millions: float, root: Path, figures: dict) -> None:
    """Every stage at this size, in order; `figures` fills as they finish (a later one may fail)."""
    per_day = int(millions * 1_000_000) // DAYS
    figures |= {"transactions_per_day": per_day, "days": DAYS, "stages": {}}
    env = {**os.environ, "ML_ASSETS_DATA_DIR": str(root), "DAGSTER_HOME": str(root / "dagster_home")}
    moved = ["MLFLOW_TRACKING_URI", "ML_ASSETS_WAREHOUSE", "ML_ASSETS_LANDING_DIR", "ML_ASSETS_DBT_TARGET"]
    for var in [*moved, "ML_ASSETS_LAKE_URI", "ML_ASSETS_LAKE_STORAGE_OPTIONS"]:
        env.pop(var, None)  # everything under the fresh root
    (root / "dagster_home").mkdir(parents=True)
    (root / "dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    logs = root / "logs"
    logs.mkdir()
    for stage in STAGES:
        if stage == "simulate":
            feed = ["--start", START.isoformat(), "--days", str(DAYS), "--transactions-per-day", str(per_day)]
            cmd = [sys.executable, "-m", "ml_assets.simulate", *feed, "--drift-day", "-1"]
        else:
            cmd = [sys.executable, "-m", "bench.scale", "--worker", stage]
        figures["stages"][stage] = _measure(cmd, env, logs / f"{stage}.log")
        print(f"  {millions:g}M {stage:<24} {figures['stages'][stage]}", flush=True)


def _table(sizes: dict[str, dict]) -> str:
    names = list(sizes)
    head = "| stage | " + " | ".join(f"{n} wall s | {n} peak RSS GB" for n in names)
    base = names[0]
    ratios = names[1:]
    head += "".join(f" | {n}/{base} wall | {n}/{base} RSS" for n in ratios) + " |"
    rows = [head, "|" + " --- |" * (1 + 2 * len(names) + 2 * len(ratios))]
    for stage in STAGES:
        if not all(stage in sizes[n]["stages"] for n in names):
            continue
        figs = [sizes[n]["stages"][stage] for n in names]
        cells = [f"{f['wall_s']:.1f} | {f['peak_rss_mb'] / 1024:.2f}" for f in figs]
        b = figs[0]
        cells += [
            f"{f['wall_s'] / b['wall_s']:.1f}x | {f['peak_rss_mb'] / b['peak_rss_mb']:.1f}x" for f in figs[1:]
        ]
        rows.append(f"| {stage} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(sizes: tuple[float, ...] = SIZES, keep: bool = False) -> dict:
    results: dict[str, dict] = {}
    for millions in sizes:
        root = Path(tempfile.mkdtemp(prefix=f"ml_assets_scale_{millions:g}M_"))
        print(f"{millions:g}M transactions ({DAYS} days) in {root}", flush=True)
        figures = results[f"{millions:g}M"] = {}
        try:
            run_size(millions, root, figures)
        except (RuntimeError, MemoryError) as e:
            figures["failed"] = str(e)[:2000]
            print(f"  {millions:g}M failed: {str(e)[:2000]}", flush=True)
        finally:
            figures["disk_mb"] = int(subprocess.run(["du", "-sm", str(root)], capture_output=True,
                                                    text=True).stdout.split()[0])  # fmt: skip
            if not keep:
                shutil.rmtree(root, ignore_errors=True)
        save("scale", results)  # after every size: a later one may not fit
        print(_table(results), flush=True)
    print(f"\nfigures in {RESULTS / 'scale.json'}")
    return results


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=list(SIZES), help="millions of transactions")
    ap.add_argument("--keep", action="store_true", help="keep each size's data root (for profiling)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        _worker(args.worker)
    else:
        main(tuple(args.sizes), args.keep)
