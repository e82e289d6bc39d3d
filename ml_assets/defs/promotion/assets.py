"""deployed_model: every change of what serves production, as a materialization with who and why,
and as a row of the promotion ledger in the lake (ml_assets.lib.ledger), which outlives the
Dagster instance."""

import json
from datetime import UTC, datetime
from typing import Literal

import dagster as dg
from pydantic import Field

from ml_assets.defs.metadata import markdown_table
from ml_assets.defs.policies import storage_retry
from ml_assets.defs.promotion.sensors import not_online
from ml_assets.defs.resources import LakeResource, MlflowResource, ServingResource
from ml_assets.lib import ledger, registry, rollout
from ml_assets.lib.deployment import (
    Move,
    NothingToRollBack,
    Refusal,
    abort_candidate,
    promote,
    promote_candidate,
    ramp_candidate,
    rollback,
    start_candidate,
)
from ml_assets.lib.serving_config import Strategy

# Under these strategies a validated version first serves beside the champion, under this alias;
# the canary sensor then promotes it or takes it off from its live results.
CANDIDATE_ALIAS = {Strategy.CANARY: registry.CANARY, Strategy.SHADOW: registry.SHADOW}


class DeploymentConfig(dg.Config):
    action: Literal["promote", "ramp_candidate", "promote_candidate", "abort_candidate", "rollback"] = Field(
        default="promote",
        description="promote: deploy a validated version (directly, or as the canary / shadow "
        "candidate, per the serving strategy); ramp_candidate: move a canary to its rollout's next "
        "step; promote_candidate / abort_candidate: end a canary or shadow deployment; rollback: put "
        "previous_champion (or `version`, an earlier champion) back.",
    )
    version: str | None = Field(
        default=None,
        description="promote: the version to promote. rollback: the earlier champion to put back "
        "(default previous_champion).",
    )
    step: int | None = Field(
        default=None, description="ramp_candidate: the rollout step to move to (1-based)."
    )
    reason: str = Field(default="", description="Why: recorded on the materialization and the version.")
    actor: str = Field(default="ui", description="Who or what asked: a user, or the sensor's name.")
    evidence: str = Field(
        default="{}", description="JSON: what the decision was taken on (the canary sensor's guards)."
    )


def _refuse(message: str) -> dg.Failure:
    return dg.Failure(message, allow_retries=False)  # a refusal, not a fault: retrying changes nothing


def _deploy(
    client,
    name: str,
    config: DeploymentConfig,
    serving: ServingResource,
    lake: LakeResource,
    mlflow: MlflowResource,
) -> Move:
    strategy = serving.config().strategy
    if config.action == "rollback":
        champions = ledger.champions(lake, name) if config.version else []
        return rollback(client, name, f"{config.reason} (by {config.actor})", config.version, champions)
    if config.action == "ramp_candidate":
        if config.step is None:
            raise _refuse("ramp_candidate needs a step: set `step` in the run config")
        return ramp_candidate(client, name, config.step, rollout.newest_batch_day(lake))
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
        steps, as_of = serving.steps(), rollout.newest_batch_day(lake)
        return start_candidate(client, name, config.version, candidate_alias, steps, as_of)
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
    lake: LakeResource,
) -> dg.MaterializeResult:
    """What production serves: `fraud_detector@champion`, and a canary or shadow candidate beside it
    when the serving strategy says so. Each materialization is one deployment change (promotion,
    candidate start, a canary's ramp step, candidate promotion or abort, rollback): which version
    replaced which, the canary's share and step, who asked, why and on what evidence. The same
    facts are appended to the promotion ledger (`lake/serving/promotion_ledger`), the history that
    outlives the Dagster instance. The serving service follows the aliases and tags within seconds.
    """
    client = mlflow.client()
    name = mlflow.registered_model_name
    strategy = serving.config()
    for tag, value in strategy.strategy_tags().items():  # the service reads its strategy from these
        client.set_registered_model_tag(name, tag, value)
    try:
        evidence = json.loads(config.evidence or "{}")
    except json.JSONDecodeError as e:
        raise _refuse(f"evidence is not JSON: {e}") from e
    try:
        move = _deploy(client, name, config, serving, lake, mlflow)
    except Refusal as e:
        raise _refuse(str(e)) from e
    if move.action in ("promote", "promote_canary", "promote_shadow", "rollback"):
        client.set_model_version_tag(name, move.champion, "deployed_at", datetime.now(UTC).isoformat())
    facts = {
        "action": move.action,
        "champion": move.champion,
        "replaced": move.replaced,
        "previous_champion": move.previous_champion,
        "candidate_alias": move.candidate_alias,
        "candidate": move.candidate,
        "canary_share": move.canary_share,
        "canary_step": move.canary_step,
        "strategy": strategy.strategy.value,
        "actor": config.actor,
        "reason": config.reason or "not given",
    }
    # A move that changed nothing (asked again for a step already taken) is no ledger event.
    ledger_version = None
    if move.action != "none":
        ledger_version = ledger.append(
            lake, ledger.row(name, **facts, dagster_run_id=context.run.run_id, evidence=evidence)
        )
    step = f", canary v{move.candidate} at {move.canary_share:.0%}" if move.canary_share is not None else ""
    context.log.info(f"{move.action}: champion {move.replaced} -> {move.champion}{step} ({config.reason})")
    return dg.MaterializeResult(
        metadata={
            **{k: "none" if v is None else v for k, v in facts.items()},
            "evidence": dg.MetadataValue.json(evidence),
            "ledger_delta_version": "none" if ledger_version is None else ledger_version,
            "aliases": dg.MetadataValue.md(
                markdown_table(
                    ["alias", "version"],
                    [(a, registry.alias_version(client, name, a) or "-") for a in registry.ALIASES],
                )
            ),
        }
    )
