"""Roll production back to the previous champion, or to any earlier one, recorded in Dagster and
in the promotion ledger with who and why.

    python -m ml_assets.rollback --reason "alert 4711: precision collapsed"   (or: make rollback)
    python -m ml_assets.rollback --version 3 --reason "..."                   (make rollback VERSION=3)

Runs the location's `rollback_job` (the same job the UI launches, with only the asset it
materializes loaded) on the local instance, so the
rollback appears as a `deployed_model` materialization and a ledger row. `--version` must name a
version the promotion ledger (lake/serving/promotion_ledger) records as champion once. Refuses in
one line, exit status 1, when there is nothing to roll back to.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import sys

log = logging.getLogger("ml_assets.rollback")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ml_assets.rollback", description=__doc__.split("\n\n")[0])
    ap.add_argument("--reason", required=True, help="why: recorded on the materialization and the version")
    ap.add_argument("--actor", default=getpass.getuser(), help="who asks (default: the current user)")
    ap.add_argument(
        "--version", default=None, help="an earlier champion to put back (default: previous_champion)"
    )
    args = ap.parse_args(argv)
    from ml_assets.lib.cli import configure_logging

    configure_logging()

    from mlflow import MlflowClient

    from ml_assets.defs.resources import LakeResource
    from ml_assets.lib import deployment, ledger, paths
    from ml_assets.lib.settings import value

    # An expected refusal is one line, said before any run starts (the job asks the same rule).
    uri, name = paths.mlflow_tracking_uri(), value("ML_ASSETS_MODEL_NAME")
    version = args.version.removeprefix("v") if args.version else None
    try:
        champions = ledger.champions(LakeResource.from_env(), name) if version else []
        target, current = deployment.rollback_target(
            MlflowClient(tracking_uri=uri, registry_uri=uri), name, version, champions
        )
    except deployment.Refusal as refusal:
        print(f"not rolled back: {refusal}")
        return 1
    log.info("rolling %s back: champion v%s -> v%s", name, current, target)

    import dagster as dg

    from ml_assets.defs.promotion.assets import deployed_model
    from ml_assets.defs.promotion.jobs import rollback_job
    from ml_assets.defs.resources import build_resources

    # The location's rollback_job and deployed_model with its resources, not the whole location:
    # loading every definition (the dbt project's manifest, dagster-dbt) cost more than the rollback.
    resources = build_resources(deployed_model.required_resource_keys)
    definitions = dg.Definitions(assets=[deployed_model], jobs=[rollback_job], resources=resources)

    config = {
        "ops": {
            "deployed_model": {
                "config": {
                    "action": "rollback",
                    "reason": args.reason,
                    "actor": args.actor,
                    "version": version,
                }
            }
        },
        "loggers": {"console": {"config": {"log_level": "INFO"}}},
    }
    result = definitions.resolve_job_def("rollback_job").execute_in_process(
        instance=dg.DagsterInstance.get(), run_config=config, raise_on_error=False
    )
    if result.success:
        meta = result.asset_materializations_for_node("deployed_model")[0].metadata
        print(
            f"rolled back: champion is v{meta['champion'].value} again (v{meta['replaced'].value} taken off)"
        )
        return 0
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    user = failure.step_failure_data.user_failure_data
    print(f"not rolled back: {user.description if user else failure.step_failure_data.error.message}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
