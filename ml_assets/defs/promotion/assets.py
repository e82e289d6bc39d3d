"""deployed_model: every change of what serves production, as a materialization with who and why."""

from datetime import UTC, datetime
from typing import Literal

import dagster as dg
from pydantic import Field

from ml_assets.defs.metadata import markdown_table
from ml_assets.defs.policies import storage_retry
from ml_assets.defs.promotion.sensors import not_online
from ml_assets.defs.resources import MlflowResource, ServingResource
from ml_assets.lib import registry
from ml_assets.lib.deployment import (
    Move,
    NothingToRollBack,
    abort_candidate,
    promote,
    promote_candidate,
    rollback,
    start_candidate,
)
from ml_assets.lib.serving_config import Strategy

# Under these strategies a validated version first serves beside the champion, under this alias;
# the canary sensor then promotes it or takes it off from its live results.
CANDIDATE_ALIAS = {Strategy.CANARY: registry.CANARY, Strategy.SHADOW: registry.SHADOW}


class DeploymentConfig(dg.Config):
    action: Literal["promote", "promote_candidate", "abort_candidate", "rollback"] = Field(
        default="promote",
        description="promote: deploy a validated version (directly, or as the canary / shadow "
        "candidate, per the serving strategy); promote_candidate / abort_candidate: end a canary or "
        "shadow deployment; rollback: put previous_champion back.",
    )
    version: str | None = Field(default=None, description="The model version to promote (promote only).")
    reason: str = Field(default="", description="Why: recorded on the materialization and the version.")
    actor: str = Field(default="ui", description="Who or what asked: a user, or the sensor's name.")


def _refuse(message: str) -> dg.Failure:
    return dg.Failure(message, allow_retries=False)  # a refusal, not a fault: retrying changes nothing


def _deploy(client, name: str, config: DeploymentConfig, strategy: Strategy, mlflow: MlflowResource) -> Move:
    if config.action == "rollback":
        return rollback(client, name, f"{config.reason} (by {config.actor})")
    candidate_alias = CANDIDATE_ALIAS.get(strategy)
    if config.action in ("promote_candidate", "abort_candidate"):
        alias = next(
            (a for a in CANDIDATE_ALIAS.values() if registry.alias_version(client, name, a)), candidate_alias
        )
        if alias is None:
            raise NothingToRollBack("no canary or shadow candidate is deployed")
        if config.action == "promote_candidate":
            return promote_candidate(client, name, alias)
        return abort_candidate(client, name, alias, f"{config.reason} (by {config.actor})")
    if not config.version:
        raise _refuse("promote needs a version: set `version` in the run config")
    verdict = client.get_model_version(name, config.version).tags.get(registry.TAG_VERDICT, "missing")
    if verdict != "passed":
        raise _refuse(f"refusing to promote {name} v{config.version}: its validation verdict is {verdict!r}")
    if missing := not_online(mlflow, config.version):
        raise _refuse(
            f"refusing to promote {name} v{config.version}: the online side can't compute its features "
            f"{', '.join(missing)}"
        )
    if candidate_alias and registry.alias_version(client, name, registry.CHAMPION):
        return start_candidate(client, name, config.version, candidate_alias)
    return promote(client, name, config.version)  # the first model has no champion to sit beside


@dg.asset(
    deps=["model_validation_report"],
    kinds={"mlflow"},
    retry_policy=storage_retry,
    owners=["team:ml-platform"],
)
def deployed_model(
    context: dg.AssetExecutionContext,
    config: DeploymentConfig,
    mlflow: MlflowResource,
    serving: ServingResource,
) -> dg.MaterializeResult:
    """What production serves: `fraud_detector@champion`, and a canary or shadow candidate beside it
    when the serving strategy says so. Each materialization is one deployment change (promotion,
    candidate start, candidate promotion or abort, rollback): which version replaced which, who
    asked and why. The serving service follows the aliases and the strategy tags within seconds.
    """
    client = mlflow.client()
    name = mlflow.registered_model_name
    strategy = serving.config()
    for tag, value in strategy.to_tags().items():  # the service reads its strategy from these
        client.set_registered_model_tag(name, tag, value)
    try:
        move = _deploy(client, name, config, strategy.strategy, mlflow)
    except NothingToRollBack as e:
        raise _refuse(str(e)) from e
    if move.action == "promote":
        client.set_model_version_tag(name, move.champion, "deployed_at", datetime.now(UTC).isoformat())
    context.log.info(f"{move.action}: champion {move.replaced} -> {move.champion} ({config.reason})")
    return dg.MaterializeResult(
        metadata={
            "action": move.action,
            "champion": move.champion or "none",
            "replaced": move.replaced or "none",
            "previous_champion": move.previous_champion or "none",
            "strategy": strategy.strategy.value,
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
