"""`make run` end to end on the demo default, from an empty data root."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import line, save

GOAL_S = 180.0
REPO = Path(__file__).resolve().parents[1]


def main() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "ML_ASSETS_DATA_DIR": tmp, "DAGSTER_HOME": f"{tmp}/dagster_home"}
        t0 = time.perf_counter()
        out = subprocess.run(["make", "-s", "run"], cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    if out.returncode:
        print(out.stdout[-3000:], out.stderr[-3000:])
        raise SystemExit("make run failed")
    print("make run, demo default, fresh data root")
    print(line("wall", wall, "s", GOAL_S, "goal"))
    figures = {"make_run_s": wall}
    save("make_run", figures)
    return figures


if __name__ == "__main__":
    main()
