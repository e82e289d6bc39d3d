"""Run the whole pipeline end to end on the local instance: `python -m ml_assets.run` (`make run`).

It loads the code location once and runs its jobs in this process, against the Dagster instance
in DAGSTER_HOME, so every run, materialization and check shows in `make dev` afterwards. It runs
the same jobs a user launches from the UI, in order; it adds nothing the UI would not do.
`--retraining-config JSON` is retraining_job's run config, as the launchpad takes it (fewer trials,
other gate thresholds): the stack's end-to-end test runs the same retraining on both.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

# Step logs at INFO: what each asset did, without Dagster's DEBUG event stream.
QUIET = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


def _landing_range(feeds: list[str], valid: set[str]) -> tuple[str, str] | None:
    from ml_assets.lib import paths

    days = sorted(
        p.name.removeprefix("date=")
        for feed in feeds
        for p in (paths.landing_dir() / feed).glob("date=*")
        if p.name.removeprefix("date=") in valid
    )
    return (days[0], days[-1]) if days else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ml_assets.run", description=__doc__.split("\n")[0])
    ap.add_argument("--retraining-config", type=json.loads, default={}, metavar="JSON",
                    help="retraining_job's run config (ops, resources), as JSON")  # fmt: skip
    args = ap.parse_args(argv)
    import dagster as dg

    from ml_assets.definitions import defs
    from ml_assets.defs.policies import daily_partitions
    from ml_assets.defs.resources import build_resources
    from ml_assets.lib import paths
    from ml_assets.lib.cli import configure_logging, cpu_seconds

    configure_logging()
    started = time.perf_counter()
    definitions = defs()
    instance = dg.DagsterInstance.get()
    span = _landing_range(["transactions", "labels"], set(daily_partitions.get_partition_keys()))
    if span is None:
        print(f"no landing data in {paths.landing_dir()}: run `python -m ml_assets.simulate` first")
        return 1
    first, last = span
    days = {RANGE_START: first, RANGE_END: last}
    steps = [
        ("ingestion_job", f"ingest {first}..{last} into bronze", days, {}),
        ("features_job", f"build the dbt features of {first}..{last}", days, {}),
        ("serving_state_job", f"feed the online store from bronze for {first}..{last}", days, {}),
        ("retraining_job", "snapshot, train, tune and validate a model", {}, args.retraining_config),
    ]
    summary = []

    def run(job_name: str, what: str, tags: dict, config: dict) -> bool:
        t0, cpu = time.perf_counter(), cpu_seconds()
        print(f"==> {what} ({job_name})", flush=True)
        result = definitions.resolve_job_def(job_name).execute_in_process(
            instance=instance, tags=tags, raise_on_error=False, run_config=QUIET | config
        )
        seconds, cpu = time.perf_counter() - t0, cpu_seconds() - cpu
        summary.append((job_name, result.success, seconds, cpu, result.run_id))
        if not result.success:
            failed = [e.message for e in result.all_events if e.is_failure][:3]
            print(f"    {job_name} did not succeed: " + " | ".join(failed), file=sys.stderr)
        return result.success

    ok = all(run(*step) for step in steps)  # all() stops at the first failure
    if ok:
        # What the running promotion sensor would do in `make dev`: one tick, and its run requests.
        from ml_assets.defs.promotion.sensors import model_promotion_sensor as sensor

        resources = {k: v for k, v in build_resources().items() if k in sensor.required_resource_keys}
        tick = sensor(dg.build_sensor_context(instance=instance, resources=resources))
        for request in tick.run_requests or []:
            reason = request.run_config["ops"]["deployed_model"]["config"]["reason"]
            run("promotion_job", f"promote: {reason}", request.tags, request.run_config)
        if not tick.run_requests:
            print(f"==> no promotion: {tick.skip_reason.skip_message if tick.skip_reason else ''}")
        ok = run("monitoring_job", f"score, drift and live performance for {first}..{last}", days, {})
    print("\nWhat ran (open `make dev`, then http://127.0.0.1:3000/runs):")
    for job_name, ok, seconds, cpu, run_id in summary:
        status = "ok  " if ok else "FAIL"
        print(f"  {status} {job_name:<28} {seconds:6.1f}s  {cpu:6.1f} cpu-s  run {run_id[:8]}")
    print(f"\nlake:      {paths.lake_uri()}\nwarehouse: {paths.warehouse_uri()}")
    print(f"total {time.perf_counter() - started:.1f}s, {cpu_seconds():.1f} cpu-s (imports included)")
    return 0 if ok and all(ok for _, ok, *_ in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
