"""Shared by the benchmarks: run a measured piece in a fresh process, report wall and peak RSS."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def run_worker(module: str, *args: str, env: dict[str, str] | None = None) -> dict:
    """Run `python -m <module> --worker ...` and return the JSON it prints last."""
    out = subprocess.run(
        [sys.executable, "-m", module, "--worker", *args],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def report_self(wall: float, **extra) -> None:
    """Printed by a worker: its measured wall time and the process's peak RSS."""
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"wall_s": round(wall, 3), "peak_rss_mb": round(peak_mb, 1), **extra}))


def children_cpu() -> float:
    """User + system CPU seconds of the child processes that ended (and their own children). On a
    shared box a command's wall time is mostly waiting for a core; its CPU time is what it costs."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(fn):
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def save(name: str, figures: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(figures, indent=2))


def line(label: str, value: float, unit: str, baseline: float | None = None, base_label: str = "") -> str:
    text = f"  {label:<44} {value:9.2f} {unit}"
    if baseline:
        text += f"   vs {base_label} {baseline:.2f} {unit}  = {value / baseline:.2f}x"
    return text
