"""The clean run the stack is compared with: the same feed on the embedded default, in one go.

`python -m ml_assets_tests.stack.reference WORLD ROOT OUT`: into a fresh data root ROOT, the
landing zone as it is at the scenario's end, then `python -m ml_assets.run` (what `make run` runs:
every job in process, files, SQLite, DuckDB) with the scenario's retraining config, then
`python -m ml_assets.serving` on its SQLite online store scoring the same traffic, then the
`inference_log` drain. Writes {"fingerprints": ..., "traffic": ..., "seconds": {...}} to OUT.

The stack's end-to-end test starts it in the background once the stack is up, so it runs while
the stack waits on its sensors.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from datetime import date
from pathlib import Path

from ml_assets.lib.settings import environment_without_settings
from ml_assets_tests.stack.world import RETRAINING, World, fingerprints, send_traffic

DAGSTER_YAML = "telemetry:\n  enabled: false\n"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, process: subprocess.Popen, give_up: float = 300) -> None:
    deadline = time.monotonic() + give_up
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=3) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the reference's service at {url} did not get ready")
        time.sleep(0.3)


def run(world: World, root: Path) -> dict:
    seconds = {}
    (root / "landing").mkdir(parents=True)
    (root / "dagster_home").mkdir()
    (root / "dagster_home" / "dagster.yaml").write_text(DAGSTER_YAML)
    world.deliver_all(root / "landing")
    env = environment_without_settings() | {
        "ML_ASSETS_DATA_DIR": str(root), "DAGSTER_HOME": str(root / "dagster_home"),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        # Bytecode kept, as the stack keeps it (ml_assets.stack): the same start-up on both sides.
        "PYTHONPYCACHEPREFIX": str(root / "pycache"),
    }  # fmt: skip
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    began = time.monotonic()
    pipeline = subprocess.run(
        [sys.executable, "-m", "ml_assets.run", "--retraining-config", json.dumps(RETRAINING)],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    seconds["make_run"] = time.monotonic() - began
    if pipeline.returncode:
        raise RuntimeError(
            f"make run failed on the embedded default:\n{pipeline.stdout[-3000:]}\n{pipeline.stderr[-3000:]}"
        )

    began = time.monotonic()
    port = _free_port()
    service = subprocess.Popen(
        [sys.executable, "-m", "ml_assets.serving", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, service)
        traffic = send_traffic([url], world.traffic())
    finally:
        service.terminate()
        service.wait(timeout=60)
    drain = subprocess.run(
        [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "ml_assets.definitions",
         "--select", "inference_log"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    if drain.returncode:
        raise RuntimeError(f"the reference's drain failed:\n{drain.stderr[-3000:]}")
    seconds["serve_and_drain"] = time.monotonic() - began
    return {
        "fingerprints": fingerprints(str(root / "lake"), {}, root / "warehouse.duckdb"),
        "traffic": traffic,
        "seconds": seconds,
    }


def main(argv: list[str]) -> int:
    world_folder, root, out = (Path(a) for a in argv)
    world = World(world_folder, date.fromisoformat((world_folder / "today").read_text().strip()))
    try:
        result = run(world, root)
    except Exception as e:  # said in OUT, so the test shows why
        result = {"error": f"{type(e).__name__}: {e}"}
    out.write_text(json.dumps(result, indent=2))
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
