"""`make run` end to end on the demo default, from an empty data root, against a bare script that
does the same compute in one process (bench/bare_pipeline.py), also from an empty data root.

Also reports what the run measured on the way: each job's time, the validation report's wall
time, and the model's holdout ROC-AUC against the simulator's oracle on the same rows.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import children_cpu, line, save

GOAL_S = 180.0
# Which of the bare script's stages does each job's compute: the per-job breakdown's baselines.
BARE_STAGES_OF = {
    "ingestion_job": ("ingestion",),
    "features_job": ("features",),
    "serving_state_job": ("online_store_feed",),
    "retraining_job": ("training_set", "fraud_model", "model_validation_report"),
    "promotion_job": ("promotion",),
    "monitoring_job": ("monitoring",),
}
REPO = Path(__file__).resolve().parents[1]


def _fresh_env(tmp: str) -> dict:
    """An empty data root, its DAGSTER_HOME the local instance `make setup` gives (dagster.local.yaml)."""
    home = Path(tmp) / "dagster_home"
    home.mkdir(parents=True)
    shutil.copy(REPO / "dagster.local.yaml", home / "dagster.yaml")
    # LightGBM's OpenMP threads wait for work by spinning: on a box whose cores other processes
    # hold, the spinning is most of training's CPU time (the bare script's fraud_model took 148
    # CPU-s at load 7, the same fit in make run 85). Waiting passively, CPU time counts the work.
    return {**os.environ, "ML_ASSETS_DATA_DIR": tmp, "DAGSTER_HOME": str(home), "OMP_WAIT_POLICY": "PASSIVE"}


def _run_figures(env: dict) -> dict:
    """What the run recorded in Dagster: the model's oracle ratio and the report's wall time."""
    code = (
        "import dagster as dg, json\n"
        "i = dg.DagsterInstance.get()\n"
        "m = lambda k: i.get_latest_materialization_event(dg.AssetKey(k)).asset_materialization.metadata\n"
        "f, r = m('fraud_model'), m('model_validation_report')\n"
        "print(json.dumps({'holdout_roc_auc': f['holdout_roc_auc'].value,"
        " 'roc_auc_over_oracle': f['roc_auc_over_oracle'].value if 'roc_auc_over_oracle' in f else None,"
        " 'holdout_vs_oracle': f['holdout_vs_oracle'].value, 'report_s': r['seconds'].value}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# The batch_predictions step of the run (DuckDB read, champion load, predict, Delta write, metadata)
# against a raw booster.predict of the same rows with the same booster, in a fresh process.
BATCH_SCORING = """
import json, time
import dagster as dg
from ml_assets.defs.resources import build_resources
from ml_assets.lib import registry
from ml_assets.lib.training import matrix

i = dg.DagsterInstance.get()
event = i.get_latest_materialization_event(dg.AssetKey("batch_predictions"))
(step,) = [s for s in i.get_run_step_stats(event.run_id) if s.step_key == "batch_predictions"]
r = build_resources()
version = registry.alias_version(r["mlflow"].client(), r["mlflow"].registered_model_name, registry.CHAMPION)
booster, columns = r["mlflow"].load_model(version)
tags = i.get_run_by_id(event.run_id).tags  # the days that step scored
days = tags["dagster/asset_partition_range_start"], tags["dagster/asset_partition_range_end"]
x = matrix(r["warehouse"].query(
    f"select {', '.join(columns)} from transaction_features "
    f"where event_date between date '{days[0]}' and date '{days[1]}'"
), columns)
t0 = time.perf_counter()
booster.predict(x)
raw = time.perf_counter() - t0
meta = event.asset_materialization.metadata
print(json.dumps({"rows": x.shape[0], "step_s": step.end_time - step.start_time, "predict_s": raw,
                  "step_predict_rows_s": meta["rows_per_second"].value["champion"],
                  "phases_s": meta["seconds_by_phase"].value}))
"""


def _batch_scoring(env: dict) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", BATCH_SCORING], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> dict:
    # CPU beside wall: on a shared box the wall time is partly waiting for a core; the CPU time
    # (user + system, of every process the command started) is what the command costs.
    with tempfile.TemporaryDirectory() as tmp:
        env = _fresh_env(tmp)
        t0, cpu0 = time.perf_counter(), children_cpu()
        out = subprocess.run(["make", "-s", "run"], cwd=REPO, env=env, capture_output=True, text=True)
        wall, cpu = time.perf_counter() - t0, children_cpu() - cpu0
        if out.returncode:
            print(out.stdout[-3000:], out.stderr[-3000:])
            raise SystemExit("make run failed")
        jobs = {
            job: (float(s), float(c))
            for job, s, c in re.findall(r"^\s+ok\s+(\w+)\s+([\d.]+)s\s+([\d.]+) cpu-s", out.stdout, re.M)
        }
        run = _run_figures(env)
        batch = _batch_scoring(env)
    with tempfile.TemporaryDirectory() as tmp:
        env = _fresh_env(tmp)
        t0, cpu0 = time.perf_counter(), children_cpu()
        subprocess.run([sys.executable, "-m", "ml_assets.simulate"], env=env, check=True, capture_output=True)
        bare = subprocess.run(
            [sys.executable, "-m", "bench.bare_pipeline"], env=env, check=True, capture_output=True, text=True
        )
        bare_wall, bare_cpu = time.perf_counter() - t0, children_cpu() - cpu0
        bare_out = json.loads(bare.stdout.strip().splitlines()[-1])
        bare_stages, bare_stage_cpu = bare_out["stages"], bare_out["cpu_s"]
    print("make run, demo default (45 days x ~10,000 transactions), fresh data root")
    print(f"  load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())} (2 cores)")
    print(line("make run wall", wall, "s", GOAL_S, "goal"))
    print(line("make run wall", wall, "s", bare_wall, "bare script"))
    print(line("make run CPU", cpu, "s", bare_cpu, "bare script"))
    print(line("bare script (simulate + same compute)", bare_wall, "s"))
    print(line("bare script CPU", bare_cpu, "s"))
    for job, (seconds, job_cpu) in jobs.items():
        stages = BARE_STAGES_OF.get(job, ())
        label = f"bare {'+'.join(stages)}"
        bare_s = sum(bare_stages.get(s, 0.0) for s in stages)
        bare_c = sum(bare_stage_cpu.get(s, 0.0) for s in stages)
        print(line(f"  job {job}", seconds, "s", bare_s or None, label))
        print(line(f"  job {job} CPU", job_cpu, "s", bare_c or None, label))
    outside = wall - sum(s for s, _ in jobs.values()), cpu - sum(c for _, c in jobs.values())
    print(line("  make run outside the jobs (simulate, imports, load)", outside[0], "s"))
    print(line("  make run outside the jobs, CPU", outside[1], "s"))
    print(line("  bare outside its stages (simulate, imports)", bare_wall - sum(bare_stages.values()), "s"))
    print(line("  bare outside its stages, CPU", bare_cpu - sum(bare_stage_cpu.values()), "s"))
    for stage, seconds in bare_stages.items():
        print(line(f"  bare {stage}", seconds, "s"))
        print(line(f"  bare {stage} CPU", bare_stage_cpu[stage], "s"))
    print(line("validation report asset (plots included)", run["report_s"], "s"))
    rows = batch["rows"]
    print(
        line(
            "batch scoring: batch_predictions step",
            rows / batch["step_s"],
            "rows/s",
            rows / batch["predict_s"],
            "raw booster.predict",
        )
    )
    print(
        line(
            "  its scoring phase (booster.predict in the step)",
            batch["step_predict_rows_s"],
            "rows/s",
            rows / batch["predict_s"],
            "raw booster.predict",
        )
    )
    for phase, phase_s in batch["phases_s"].items():
        print(line(f"  its {phase} phase", phase_s, "s"))
    if run["roc_auc_over_oracle"]:
        print(f"  holdout ROC-AUC / oracle ROC-AUC on the same rows: {run['roc_auc_over_oracle']:.4f}")
    figures = {
        "make_run_s": wall, "bare_s": bare_wall, "make_run_cpu_s": cpu, "bare_cpu_s": bare_cpu,
        "jobs": {job: {"s": s, "cpu_s": c} for job, (s, c) in jobs.items()}, "bare_stages": bare_stages,
        "bare_stages_cpu_s": bare_stage_cpu, "load_average": os.getloadavg(), "batch_scoring": batch, **run,
    }  # fmt: skip
    save("make_run", figures)
    return figures


if __name__ == "__main__":
    main()
