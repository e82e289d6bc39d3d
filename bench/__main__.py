"""Run the benchmarks: `python -m bench [name ...]` (all but `scale` by default)."""

from __future__ import annotations

import importlib
import sys

BENCHES = {
    "import": "bench.import_time",
    "ingest": "bench.ingest",
    "features": "bench.features",
    "training": "bench.training",
    "serving": "bench.serving",
    "serving_auth": "bench.serving_auth",
    "online_store": "bench.online_store",
    "make_run": "bench.make_run",
    "rollback": "bench.rollback",
    "stack": "bench.stack",
    "scale": "bench.scale",
}
# Run only when named: the pipeline at 1M, 5M and 20M transactions takes about an hour here.
ON_REQUEST = {"scale"}


def main(names: list[str]) -> None:
    for name in names or [b for b in BENCHES if b not in ON_REQUEST]:
        print(f"\n### {name}")
        importlib.import_module(BENCHES[name]).main()


if __name__ == "__main__":
    main(sys.argv[1:])
