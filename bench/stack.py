"""The one-box stack (`make stack`): the end-to-end scenario's wall time, the multiprocess executor's
cost per step on PostgreSQL storage, and how long a daemon restart leaves work waiting.

1. The scenario of `make test-stack` (ml_assets_tests/stack/scenario.py), phase by phase, from
   `make stack` to `make stack-down`, on its small world (14 days x 300 transactions, ending today),
   beside the same feed on the embedded default in one go (`make run`, then the same traffic
   through `python -m ml_assets.serving` and the drain), run after it, alone.
2. One day's ingestion (`ingestion_job`: 2 assets, 7 checks, 9 steps) executed by `dagster`'s own
   `execute_job` on the stack's instance (PostgreSQL run and event storage, the lake on the
   object store): with the multiprocess executor as the stack runs it (each step forked from a
   server that loaded the code location once), with the multiprocess executor as it was before
   (each step spawned: a fresh interpreter importing the location), and in process. Per step:
   the wall time of the run over its steps, and the gap from a step's launch to its start.
   Baseline: the same day in process on the embedded default (SQLite storage, files).
3. A daemon restart (`python -m ml_assets.stack restart dagster-daemon`) with a run queued
   through GraphQL as it goes down: from the old daemon's stop to the new one answering healthy,
   and to the queued run's start.

Each measured piece runs in processes of its own, as a user's would. `python -m bench stack`.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import line, save

REPO = Path(__file__).resolve().parent.parent


LABELS = {
    "forkserver": "multiprocess (forked), PostgreSQL",
    "spawn": "multiprocess (spawned), PostgreSQL",
    "in_process": "in process, PostgreSQL",
    "embedded_in_process": "in process, SQLite",
}


def ingestion_job():
    """The code location's ingestion job, for `reconstructable` (step processes rebuild it)."""
    from ml_assets.definitions import defs

    return defs().resolve_job_def("ingestion_job")


def _execute(day: str, executor: str, dagster_home: str) -> None:
    """Worker: one ingestion run of `day` with `executor` (forkserver, spawn or in_process) on the
    instance in `dagster_home`; prints its step timings as JSON."""
    import dagster as dg

    import ml_assets.definitions as location

    if executor == "spawn":  # the executor before: only the run's own process picks it
        location.MULTIPROCESS = dg.multiprocess_executor
    instance = dg.DagsterInstance.from_config(dagster_home)
    started = time.time()
    with dg.execute_job(
        dg.reconstructable(ingestion_job), instance=instance, tags={"dagster/partition": day}
    ) as result:
        assert result.success, [e.message for e in result.all_events if e.is_failure][:3]
        run_id = result.run_id
    ended = time.time()
    launch = {}
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None or event.step_key is None:
            continue
        kind = event.event_type_value
        if kind in ("STEP_WORKER_STARTING", "STEP_START"):
            launch.setdefault(event.step_key, {})[kind] = record.timestamp
    gaps = [t["STEP_START"] - t["STEP_WORKER_STARTING"] for t in launch.values() if len(t) == 2]
    stats = instance.get_run_step_stats(run_id)
    print(json.dumps({"wall_s": ended - started, "steps": len(stats), "launch_gaps_s": gaps}))
    instance.dispose()


def _worker(day: str, executor: str, env: dict[str, str]) -> dict:
    code = f"from bench.stack import _execute; _execute({day!r}, {executor!r}, {env['DAGSTER_HOME']!r})"
    setting = "in_process" if executor == "in_process" else "multiprocess"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env | {"ML_ASSETS_EXECUTOR": setting},
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    if out.returncode:
        raise SystemExit(f"ingestion with {executor} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _scenario(folder: Path):
    from ml_assets.lib.settings import environment_without_settings
    from ml_assets_tests.stack.scenario import Scenario
    from ml_assets_tests.stack.world import simulate

    world = simulate(folder / "world")
    root = folder / "data"
    world.deliver_history(root / "landing")
    scenario = Scenario(root, world, environment_without_settings() | {"ML_ASSETS_DATA_DIR": str(root)})
    began = time.monotonic()
    up = scenario.stack_cli("up")
    if up.returncode:
        raise SystemExit(f"make stack failed:\n{up.stderr[-3000:]}")
    scenario.seconds["up"] = time.monotonic() - began
    for phase in ("history", "arrival", "automation", "retraining", "promotion", "traffic", "monitoring"):
        getattr(scenario, phase)()
    scenario.notes["fingerprints"] = scenario.fingerprints()
    scenario.seconds["scenario_before_down"] = time.monotonic() - began
    return scenario


def _restart_wait(scenario) -> dict:
    """Queue a run through GraphQL just as the daemon is restarted; when did it start?"""
    import threading

    started: dict = {}

    def restart():
        out = scenario.stack_cli("restart", "dagster-daemon")
        started.update(json.loads(out.stdout))

    thread = threading.Thread(target=restart)
    thread.start()
    time.sleep(0.5)  # the old daemon is going down
    queued_at = time.time()
    run_id = scenario.submit("serving_state_job", {"dagster/partition": str(scenario.world.yesterday)})
    thread.join()
    (run,) = scenario.succeeded([run_id], "the run queued across the restart")
    record = scenario.instance().get_run_record_by_id(run.run_id)
    return {
        "down_s": started["started_at"] - started["stopped_at"],
        "healthy_after_stop_s": started["healthy_at"] - started["stopped_at"],
        "queued_run_started_after_stop_s": record.start_time - started["stopped_at"],
        "queued_run_waited_s": record.start_time - queued_at,
    }


def main() -> dict:
    from ml_assets_tests.stack import reference

    figures: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench_stack_") as tmp:
        folder = Path(tmp)
        folder.chmod(0o711)  # PostgreSQL (as user postgres) reaches its folder
        scenario = _scenario(folder)
        try:
            # The stack's bytecode (warm by now) for every variant: the same imports, compiled once.
            bytecode = {"PYTHONPYCACHEPREFIX": str(scenario.stack_dir / "pycache")}
            env = (
                scenario.stack_env
                | {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/")}
                | bytecode
            )
            day = str(scenario.world.redelivered)  # ingested already: a replace of the same day
            steps = {ex: _worker(day, ex, env) for ex in ("forkserver", "spawn", "in_process")}
            figures["restart"] = _restart_wait(scenario)
        finally:
            scenario.close()
            t0 = time.monotonic()
            scenario.stack_cli("down", timeout=300)
            scenario.seconds["down"] = time.monotonic() - t0
        # make stack .. every phase .. make stack-down (the measurements in between left out)
        figures["scenario_s"] = scenario.seconds["scenario_before_down"] + scenario.seconds["down"]
        figures["phases_s"] = scenario.seconds
        t0 = time.monotonic()
        ref = reference.run(scenario.world, folder / "reference")
        figures["embedded_s"] = time.monotonic() - t0
        figures["embedded_phases_s"] = ref["seconds"]
        figures["same_data"] = ref["fingerprints"] == scenario.notes["fingerprints"]
        # The same day on the embedded default, in process: its own root (files, SQLite).
        embedded = folder / "embedded-day"
        shutil.copytree(folder / "reference", embedded)
        (embedded / "dagster_home").mkdir(exist_ok=True)
        from ml_assets.lib.settings import environment_without_settings

        env = environment_without_settings() | bytecode | {
            "ML_ASSETS_DATA_DIR": str(embedded), "DAGSTER_HOME": str(embedded / "dagster_home"),
        }  # fmt: skip
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        steps["embedded_in_process"] = _worker(day, "in_process", env)
    figures["ingestion_steps"] = steps

    print("the stack's end-to-end scenario (make stack .. make stack-down), 14 days x 300 transactions")
    print(line("scenario wall", figures["scenario_s"], "s", figures["embedded_s"], "embedded make run+serve"))
    for phase, seconds in figures["phases_s"].items():
        print(line(f"  {phase}", seconds, "s"))
    for phase, seconds in figures["embedded_phases_s"].items():
        print(line(f"  embedded {phase}", seconds, "s"))
    print(f"  same rows and content hashes on both: {figures['same_data']}")
    print(f"one day's ingestion ({steps['in_process']['steps']} steps), wall per step")
    base = steps["embedded_in_process"]["wall_s"] / steps["embedded_in_process"]["steps"]
    for name, label in LABELS.items():
        s = steps[name]
        print(line(f"  {label}", s["wall_s"] / s["steps"], "s", base, "in process on SQLite"))
        if s["launch_gaps_s"]:
            print(
                line(
                    f"    its step launch (median of {len(s['launch_gaps_s'])})",
                    statistics.median(s["launch_gaps_s"]),
                    "s",
                )
            )
    r = figures["restart"]
    print("a daemon restart")
    print(line("  old daemon stopped -> new one healthy", r["healthy_after_stop_s"], "s"))
    print(line("  a run queued meanwhile started after the stop", r["queued_run_started_after_stop_s"], "s"))
    save("stack", figures)
    return figures


if __name__ == "__main__":
    main()
