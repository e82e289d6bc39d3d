"""deployed_model: every change of what serves production, as a materialization with who and why."""

from datetime import UTC, datetime
from typing import Literal

import dagster as dg
from pydantic import Field

from ml_assets.defs.metadata import markdown_table
from ml_assets.defs.policies import storage_retry
from ml_assets.defs.resources import MlflowResource
from ml_assets.lib import registry
from ml_assets.lib.deployment import NothingToRollBack, promote, rollback


class DeploymentConfig(dg.Config):
    action: Literal["promote", "rollback"] = Field(
        default="promote", description="promote a version to champion, or roll back to previous_champion."
    )
    version: str | None = Field(default=None, description="The model version to promote (promote only).")
    reason: str = Field(default="", description="Why: recorded on the materialization and the version.")
    actor: str = Field(default="ui", description="Who or what asked: a user, or the sensor's name.")


@dg.asset(
    deps=["model_validation_report"],
    kinds={"mlflow"},
    retry_policy=storage_retry,
    owners=["team:ml-platform"],
)
def deployed_model(
    context: dg.AssetExecutionContext, config: DeploymentConfig, mlflow: MlflowResource
) -> dg.MaterializeResult:
    """The model version production serves (`fraud_detector@champion`). Each materialization is
    a promotion or a rollback: which version replaced which, who asked and why. The serving
    service follows the alias within seconds.
    """
    client = mlflow.client()
    name = mlflow.registered_model_name
    if config.action == "rollback":
        try:
            move = rollback(client, name, f"{config.reason} (by {config.actor})")
        except NothingToRollBack as e:
            raise dg.Failure(str(e), allow_retries=False) from e
    else:
        if not config.version:
            raise dg.Failure("promote needs a version: set `version` in the run config", allow_retries=False)
        tags = client.get_model_version(name, config.version).tags
        if tags.get(registry.TAG_VERDICT) != "passed":
            raise dg.Failure(
                f"refusing to promote {name} v{config.version}: its validation verdict is "
                f"{tags.get(registry.TAG_VERDICT, 'missing')!r}, not 'passed'",
                allow_retries=False,  # a refusal, not a fault: retrying changes nothing
            )
        move = promote(client, name, config.version)
    if move.champion:
        client.set_model_version_tag(name, move.champion, "deployed_at", datetime.now(UTC).isoformat())
    context.log.info(f"{move.action}: champion {move.replaced} -> {move.champion} ({config.reason})")
    return dg.MaterializeResult(
        metadata={
            "action": move.action,
            "champion": move.champion or "none",
            "replaced": move.replaced or "none",
            "previous_champion": move.previous_champion or "none",
            "actor": config.actor,
            "reason": config.reason or "not given",
            "aliases": dg.MetadataValue.md(
                markdown_table(
                    ["alias", "version"],
                    [(a, registry.alias_version(client, name, a) or "-") for a in registry.ALIASES],
                )
            ),
        }
    )
