"""Import time of the code location, against importing dagster alone (median of several runs)."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

from bench.common import line, save

RUNS = 5


def _wall(code: str) -> float:
    walls = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls)


def main() -> dict:
    python = _wall("pass")
    dagster = _wall("import dagster")
    location = _wall("import ml_assets.definitions")
    loaded = _wall("from ml_assets.definitions import defs; defs()")
    print(f"import time (median of {RUNS} fresh processes)")
    print(line("python startup", python, "s"))
    print(line("import dagster", dagster, "s"))
    print(line("import ml_assets.definitions", location, "s", dagster, "import dagster"))
    print(line("load Definitions (defs())", loaded, "s", dagster, "import dagster"))
    figures = {"python_s": python, "dagster_s": dagster, "import_location_s": location, "load_defs_s": loaded}
    save("import", figures)
    return figures


if __name__ == "__main__":
    main()
