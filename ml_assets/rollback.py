"""Roll production back to the previous champion, recorded in Dagster with who and why.

    python -m ml_assets.rollback --reason "alert 4711: precision collapsed"   (or: make rollback)

Runs the location's `rollback_job` (the same job the UI launches) on the local instance, so the
rollback appears as a `deployed_model` materialization. Refuses clearly when there is nothing to
roll back to.
"""

from __future__ import annotations

import argparse
import getpass
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ml_assets.rollback", description=__doc__.split("\n\n")[0])
    ap.add_argument("--reason", required=True, help="why: recorded on the materialization and the version")
    ap.add_argument("--actor", default=getpass.getuser(), help="who asks (default: the current user)")
    args = ap.parse_args(argv)

    from mlflow import MlflowClient

    from ml_assets.lib import deployment, paths
    from ml_assets.lib.settings import value

    # An expected refusal is one line, said before any run starts (the job asks the same rule).
    uri, name = paths.mlflow_tracking_uri(), value("ML_ASSETS_MODEL_NAME")
    try:
        deployment.rollback_target(MlflowClient(tracking_uri=uri, registry_uri=uri), name)
    except deployment.NothingToRollBack as refusal:
        print(f"not rolled back: {refusal}")
        return 1

    import dagster as dg

    from ml_assets.definitions import defs

    config = {
        "ops": {
            "deployed_model": {"config": {"action": "rollback", "reason": args.reason, "actor": args.actor}}
        },
        "loggers": {"console": {"config": {"log_level": "INFO"}}},
    }
    result = (
        defs()
        .resolve_job_def("rollback_job")
        .execute_in_process(instance=dg.DagsterInstance.get(), run_config=config, raise_on_error=False)
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
