"""Features in dbt: bronze -> staging -> transaction_features, one run's days at a time.

Every dbt model is an asset (partitioned by day like bronze) and every dbt test an asset check,
including the leakage test that recomputes features from the past only. `dbt build` works the same
inside dbt_project/ on its own; here Dagster passes each run's partition range as dbt vars.
"""

import json
import os
import sys
from datetime import timedelta
from pathlib import Path

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, DbtProject, dbt_assets
from pydantic import Field

from ml_assets.defs.policies import daily_partitions, one_run_per_range, storage_retry
from ml_assets.defs.resources import MlflowResource
from ml_assets.lib import paths, registry
from ml_assets.lib.dbt_project import DBT_PROJECT_DIR
from ml_assets.lib.features import feature_columns

dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)
# `dagster dev` / `dg` re-parse the project when they start (elsewhere `make setup` prepares the
# manifest). dagster-dbt's preparer runs whatever `dbt` is on PATH: make that this environment's,
# so `.venv/bin/dagster dev` works without an activated venv.
_env_bin = str(Path(sys.executable).parent)
if _env_bin not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = os.pathsep.join([_env_bin, os.environ.get("PATH", "")])
dbt_project.prepare_if_dev()


class FeatureTranslator(DagsterDbtTranslator):
    """dbt models keep their names as asset keys; bronze sources map to the ingestion assets."""

    def get_asset_spec(self, manifest, unique_id, project):
        spec = super().get_asset_spec(manifest, unique_id, project)
        if unique_id.startswith("model."):
            # Features follow new days (after their ingestion checks pass) without a schedule.
            return spec.replace_attributes(
                automation_condition=dg.AutomationCondition.eager()
                & dg.AutomationCondition.all_deps_blocking_checks_passed(),
                owners=["team:ml-platform"],
            )
        return spec


class FeaturesConfig(dg.Config):
    full_refresh: bool = Field(
        default=False,
        description="Rebuild the dbt tables from scratch (dbt --full-refresh) instead of replacing "
        "this run's days. Only for a run over every day from the first partition on: days outside "
        "the run would be lost. A feature added to the spec needs no full refresh: its column joins "
        "the table, and materializing the days again (a backfill) fills it in.",
    )


def refusal(mlflow: MlflowResource) -> str | None:
    """Why the features must not be built now, or None: a version an alias points at (the
    champion, the rollback target previous_champion, a candidate) needs a feature the spec no
    longer computes. The table would lose that column (on_schema_change='sync_all_columns'), and
    the version could be neither scored nor served."""
    client = mlflow.client()
    lost = registry.not_computable(
        registry.deployed_columns(client, mlflow.registered_model_name, mlflow.tracking_uri),
        feature_columns(),
    )
    if not lost:
        return None
    return (
        f"refusing to build the features: {'; '.join(lost)}, which the feature spec no longer computes. "
        "Keep the feature until no alias points at a version that needs it (train one without it, "
        "fraud_model's exclude_features, promote it, then retire the previous champion), or put it back."
    )


@dbt_assets(
    manifest=dbt_project.manifest_path,
    project=dbt_project,
    dagster_dbt_translator=FeatureTranslator(),
    partitions_def=daily_partitions,
    backfill_policy=one_run_per_range,
    retry_policy=storage_retry,
    # The warehouse is one DuckDB database, and DuckDB takes one writing process at a time: with
    # runs side by side (the stack's queue, a backfill) a second dbt step would fail on the file's
    # lock. The instance limits this pool to one slot (deploy/dagster.yaml.template), so the step
    # waits for the pool instead.
    pool="warehouse",
)
def feature_models(
    context: dg.AssetExecutionContext, config: FeaturesConfig, dbt: DbtCliResource, mlflow: MlflowResource
):
    """Run `dbt build` for the run's days: load them into the warehouse, compute their features
    from the lookback they need, and run every dbt test (as Dagster asset checks).

    Refused, before dbt runs, when the feature spec no longer computes a feature that a deployed
    version (an alias: the champion, previous_champion, a candidate) needs (`refusal`)."""
    if reason := refusal(mlflow):
        raise dg.Failure(reason, allow_retries=False)
    window = context.partition_time_window
    if config.full_refresh and window.start > daily_partitions.start:
        raise dg.Failure(
            f"full_refresh rebuilds the tables from this run's days only, and the run starts at "
            f"{window.start.date()}, after the first partition {daily_partitions.start.date()}: "
            "launch it over every day, or materialize the days again without it",
            allow_retries=False,
        )
    days = {
        "min_date": window.start.date().isoformat(),
        "max_date": (window.end - timedelta(days=1)).date().isoformat(),
    }
    context.log.info(f"dbt build for event days {days['min_date']}..{days['max_date']}")
    # dbt's run artifacts and log go under the data root, not into the project folder.
    target = paths.dbt_runs_dir() / context.run.run_id
    args = ["build", "--vars", json.dumps(days | paths.dbt_vars())] + (
        ["--full-refresh"] if config.full_refresh else []
    )
    yield from dbt.cli(args, context=context, target_path=target).stream()
