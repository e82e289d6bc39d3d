"""Run the benchmarks: `python -m bench [name ...]` (all of them by default)."""

from __future__ import annotations

import importlib
import sys

BENCHES = {
    "import": "bench.import_time",
    "ingest": "bench.ingest",
    "features": "bench.features",
    "training": "bench.training",
    "serving": "bench.serving",
    "make_run": "bench.make_run",
}


def main(names: list[str]) -> None:
    for name in names or list(BENCHES):
        print(f"\n### {name}")
        importlib.import_module(BENCHES[name]).main()


if __name__ == "__main__":
    main(sys.argv[1:])
