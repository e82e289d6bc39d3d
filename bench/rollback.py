"""Rollback: how long `make rollback VERSION=N` takes, and how long until a running service serves
the version it restored.

A small world in a temp data root: two versions of a small LightGBM model registered in a SQLite
MLflow store, v1 then v2 promoted (blue-green) through `promotion_job` on the root's own Dagster
instance. `make rollback VERSION=...` runs in a fresh process, as a user runs it, rolling back and
forth between the two (both earlier champions in the promotion ledger): its wall and CPU time, and
its refusal of a version that was never champion. First as this environment runs Python
(PYTHONDONTWRITEBYTECODE set, a venv without bytecode: every start compiles every module it
imports), then with bytecode compiled once into the bench's temp dir (PYTHONPYCACHEPREFIX), as on
a machine where Python keeps its caches. Then the scoring service (`python -m ml_assets.serving`)
on a loopback port, /model read every 20 ms from a thread: the time from the command's start
until the service answers with the restored version, with the service polling the registry every
`ML_ASSETS_SERVING_POLL_SECONDS` at the old default (5 s) and at the current one.

Baselines, same run and conditions: the least any rollback command can cost (a fresh interpreter
that imports MLflow and moves one alias, nothing else); the rollback as the command ran it before
(the whole code location loaded); the 10 s aim.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from bench.common import children_cpu, line, save

REPO = Path(__file__).resolve().parent.parent
OLD_POLL_SECONDS = 5.0  # the default before this bench (README: ML_ASSETS_SERVING_POLL_SECONDS)
GOAL_S = 10.0


# Where the commands' compiled bytecode goes, once `main` turns it on; None: none is kept. With
# PYTHONDONTWRITEBYTECODE set (as where this was written) and a venv installed without bytecode,
# every command compiles each module it imports on every start: half of a rollback's CPU time.
BYTECODE: dict[str, Path | None] = {"cache": None}


def _env(root: Path, **extra: str) -> dict[str, str]:
    from ml_assets.lib.settings import environment_without_settings

    env = environment_without_settings() | {
        "ML_ASSETS_DATA_DIR": str(root),
        "DAGSTER_HOME": str(root / "dagster_home"),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        **extra,
    }
    if BYTECODE["cache"] is not None:  # compiled once into the bench's temp dir, the venv untouched
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(BYTECODE["cache"])
    return env


def _world(root: Path) -> None:
    """Two registered versions, v1 then v2 promoted (blue-green), in the data root `root`."""
    (root / "dagster_home").mkdir(parents=True)
    (root / "dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    code = """
import mlflow
from ml_assets.lib import paths, registry, tracking
from ml_assets.lib.features import feature_columns
from ml_assets_tests.serving_support import train_booster
from ml_assets_tests.conftest import run_job, load_defs
import dagster as dg
uri = paths.mlflow_tracking_uri()
tracking.use_store(uri)
client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
# Artifacts under the data root (a new store's Default experiment would put them in ./mlruns).
mlflow.set_experiment(experiment_id=client.create_experiment("bench", paths.mlflow_artifact_root()))
with mlflow.start_run() as run:
    model_uri = tracking.log_model(train_booster(seed=7, rounds=50)[0], None, feature_columns())
for _ in range(2):
    tracking.register(client, "fraud_detector", model_uri, run.info.run_id, {registry.TAG_VERDICT: "passed"})
definitions, instance = load_defs(), dg.DagsterInstance.get()
for version in ("1", "2"):
    config = {"ops": {"deployed_model": {"config": {"version": version, "actor": "bench"}}}}
    assert run_job(definitions, "promotion_job", instance=instance, run_config=config).success
"""
    subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True,
        env=_env(root, ML_ASSETS_SERVING_STRATEGY="blue_green"),
    )  # fmt: skip


def _free_port() -> int:
    from ml_assets_tests.serving_support import free_port

    return free_port()


def _champion(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/model", timeout=2) as r:
            return json.load(r)["arms"][0]["version"]
    except (OSError, KeyError, IndexError):
        return None


def _serve(root: Path, poll_seconds: float) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    env = _env(root, ML_ASSETS_SERVING_POLL_SECONDS=str(poll_seconds))
    proc = subprocess.Popen(
        [sys.executable, "-m", "ml_assets.serving", "--port", str(port)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while _champion(port) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("the service did not start")
        time.sleep(0.2)
    return proc, port


def _make(root: Path, *args: str) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall s, CPU s, the process) of `make ARGS` on the data root. CPU: on a shared box the wall
    time is mostly waiting for a core; the CPU time is what the command costs."""
    started, cpu = time.perf_counter(), children_cpu()
    out = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), *args], env=_env(root),
                         capture_output=True, text=True)  # fmt: skip
    return time.perf_counter() - started, children_cpu() - cpu, out


def _rollback_served(root: Path, port: int, version: str) -> dict:
    """`make rollback VERSION=version` while /model is read every 20 ms: its wall time, and the
    time from its start until the service serves `version`."""
    served: dict = {}
    started = time.perf_counter()

    def watch():
        while time.perf_counter() - started < 300:
            if _champion(port) == version:
                served["at"] = time.perf_counter() - started
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    wall, cpu, out = _make(root, "rollback", f"VERSION={version}", "REASON=bench")
    watcher.join()
    if out.returncode != 0 or "at" not in served:
        raise SystemExit(f"rollback to v{version} failed: {out.stdout[-2000:]} {out.stderr[-2000:]}")
    return {
        "command_s": round(wall, 3),
        "command_cpu_s": round(cpu, 3),
        "served_s": round(served["at"], 3),
        "served_after_command_s": round(served["at"] - wall, 3),  # negative: served before it exited
        "printed": out.stdout.splitlines()[-1],
    }


def _bare_alias_move(root: Path) -> tuple[float, float]:
    """(wall s, CPU s) of a fresh interpreter that imports MLflow and sets one alias: the floor of
    any command."""
    code = (
        "from mlflow import MlflowClient; from ml_assets.lib import paths; u = paths.mlflow_tracking_uri(); "
        "c = MlflowClient(tracking_uri=u, registry_uri=u); "
        "c.set_registered_model_alias('fraud_detector', 'bench_probe', '1')"
    )
    started, cpu = time.perf_counter(), children_cpu()
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(root), check=True, capture_output=True)
    return time.perf_counter() - started, children_cpu() - cpu


def _whole_location_rollback(root: Path, version: str) -> tuple[float, float]:
    """(wall s, CPU s) of the rollback as the command ran it before: the whole code location
    loaded (every definition, the dbt project's manifest, dagster-dbt) to run rollback_job."""
    code = f"""
import dagster as dg
from ml_assets.lib.cli import configure_logging
configure_logging()
from ml_assets.definitions import defs
config = {{"ops": {{"deployed_model": {{"config": {{"action": "rollback", "version": "{version}"}}}}}},
          "loggers": {{"console": {{"config": {{"log_level": "INFO"}}}}}}}}
job = defs().resolve_job_def("rollback_job")
assert job.execute_in_process(instance=dg.DagsterInstance.get(), run_config=config).success
"""
    started, cpu = time.perf_counter(), children_cpu()
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(root), check=True, capture_output=True)
    return time.perf_counter() - started, children_cpu() - cpu


def _poll_cost(root: Path) -> float:
    """One registry read of the service's poller (aliases and tags, nothing to load), in ms."""
    code = """
import time
from ml_assets.lib import paths
from ml_assets.serving.registry import Registry
r = Registry(paths.mlflow_tracking_uri(), "fraud_detector")
d = r.resolve()
t = time.perf_counter()
for _ in range(50):
    r.resolve(d)
print((time.perf_counter() - t) / 50 * 1000)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(root), check=True,
                         capture_output=True, text=True)  # fmt: skip
    return float(out.stdout.strip().splitlines()[-1])


def _commands(root: Path, version: str) -> dict:
    """The bare alias move, the refusal and a rollback to `version`: wall and CPU of each."""
    bare_wall, bare_cpu = _bare_alias_move(root)
    refusal_s, refusal_cpu, refused = _make(root, "rollback", "VERSION=7")
    rollback_s, rollback_cpu, rolled = _make(root, "rollback", f"VERSION={version}", "REASON=bench")
    back = "2" if version == "1" else "1"  # and back again, the way the command ran before
    whole_s, whole_cpu = _whole_location_rollback(root, back)
    _make(root, "rollback", f"VERSION={version}", "REASON=bench")  # where the caller expects it
    if rolled.returncode != 0 or refused.returncode == 0:  # make exits 2 when the command exits 1
        raise SystemExit(f"unexpected: {rolled.stdout[-1000:]} {refused.stdout[-1000:]}")
    return {
        "bare_alias_move": {"wall_s": round(bare_wall, 3), "cpu_s": round(bare_cpu, 3)},
        "refusal": {"wall_s": round(refusal_s, 3), "cpu_s": round(refusal_cpu, 3)},
        "rollback": {"wall_s": round(rollback_s, 3), "cpu_s": round(rollback_cpu, 3)},
        "rollback_whole_location": {"wall_s": round(whole_s, 3), "cpu_s": round(whole_cpu, 3)},
        "refusal_printed": [x for x in refused.stdout.splitlines() if x.startswith("not rolled back")],
    }


def main() -> dict:
    from ml_assets.lib.settings import SETTINGS

    current_poll = float(SETTINGS["ML_ASSETS_SERVING_POLL_SECONDS"].default)
    figures: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench_rollback_") as tmp:
        root = Path(tmp) / "data"
        _world(root)  # champion v2, previous v1: both earlier champions in the ledger from here on
        figures["poll_ms"] = round(_poll_cost(root), 3)
        figures["no_bytecode"] = _commands(root, "1")
        BYTECODE["cache"] = Path(tmp) / "pycache"
        _commands(root, "2")  # compiles what the commands import, once
        figures["bytecode"] = _commands(root, "1")
        # The service: how long until it serves what the rollback restored (commands with bytecode).
        for label, poll, version in (
            ("old_poll", OLD_POLL_SECONDS, "2"),
            ("current_poll", current_poll, "1"),
        ):
            proc, port = _serve(root, poll)
            try:
                figures[label] = {"poll_seconds": poll, **_rollback_served(root, port, version)}
            finally:
                proc.terminate()
                proc.wait(timeout=60)
        BYTECODE["cache"] = None
    figures["load_average"] = os.getloadavg()
    for label in ("no_bytecode", "bytecode"):
        f = figures[label]
        base = f["bare_alias_move"]
        print(f"  {label.replace('_', ' ')}:")
        for what, key in (
            ("make rollback VERSION=N", "rollback"),
            ("make rollback VERSION=7 (refused)", "refusal"),
        ):
            print(line(f"{what}: wall", f[key]["wall_s"], "s", base["wall_s"], "bare alias move"))
            print(line(f"{what}: CPU", f[key]["cpu_s"], "s", base["cpu_s"], "bare alias move"))
        before = f["rollback_whole_location"]
        print(line("make rollback: wall, against the whole location", f["rollback"]["wall_s"], "s",
                   before["wall_s"], "before"))  # fmt: skip
    now, old = figures["current_poll"], figures["old_poll"]
    for f in (old, now):
        print(
            line(f"served restored version, poll {f['poll_seconds']:g} s", f["served_s"], "s", GOAL_S, "goal")
        )
        print(
            f"    its command {f['command_s']:.2f} s wall; served "
            f"{f['served_after_command_s']:+.2f} s after it exited"
        )
    print(f"  registry read per poll: {figures['poll_ms']:.2f} ms; load average {figures['load_average']}")
    print(f"  refusal printed: {figures['bytecode']['refusal_printed']}")
    save("rollback", figures)
    return figures


if __name__ == "__main__":
    main()
