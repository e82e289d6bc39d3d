"""How the serving service deploys the registered model: the registry's aliases, and the deployment
strategy kept as registered-model tags.

The promotion jobs drive serving by setting these aliases and tags; the service polls the registry
and follows. Dagster-free and MLflow-free, so both sides import the same names and the same
reading of the tags.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

# The registry contract's names (ml_assets.lib.registry), shared with the training and promotion side.
from ml_assets.lib.registry import CANARY, CHALLENGER, CHAMPION, PREVIOUS_CHAMPION, SHADOW
from ml_assets.lib.registry import MODEL_NAME as DEFAULT_MODEL_NAME  # noqa: F401  (re-exported)

# Registered-model tags.
STRATEGY_TAG = "serving.strategy"
CANARY_SHARE_TAG = "serving.canary_share"  # 0..1: share of transactions scored by the canary
AB_SHARE_TAG = "serving.ab_share"  # 0..1: share of cards on arm B (the challenger)
# A canary's gradual rollout (ml_assets.lib.rollout): the steps it was started with, the step it
# is at, and when that step began (UTC, ISO-8601) and the newest batch-scored day then. The
# canary sensor reads them; the service reads only the share.
CANARY_STEPS_TAG = "serving.canary_steps"  # e.g. "0.05,0.25,0.5,1.0"
CANARY_STEP_TAG = "serving.canary_step"  # 1-based index into the steps
CANARY_STEP_STARTED_TAG = "serving.canary_step_started_at"
CANARY_STEP_AS_OF_TAG = "serving.canary_step_as_of"
CANARY_STARTED_TAG = "serving.canary_started_at"  # the rollout's first step
ROLLOUT_TAGS = (
    CANARY_STEPS_TAG,
    CANARY_STEP_TAG,
    CANARY_STEP_STARTED_TAG,
    CANARY_STEP_AS_OF_TAG,
    CANARY_STARTED_TAG,
)

DEFAULT_CANARY_SHARE = 0.1
DEFAULT_AB_SHARE = 0.5


class Strategy(StrEnum):
    SINGLE = "single"  # champion only
    BLUE_GREEN = "blue_green"  # champion, with previous_champion loaded: a rollback is a switch
    CANARY = "canary"  # a share of transactions to the canary alias
    SHADOW = "shadow"  # the shadow alias scores every transaction too; only champion is returned
    AB = "ab"  # a sticky split of cards: champion (A) and challenger (B)


# The transaction field whose hash decides the arm: a canary split is per transaction (a retry gets
# the same model), an A/B split per card (a card stays on its arm).
SPLIT_KEYS = {Strategy.CANARY: "transaction_id", Strategy.AB: "card_id"}


@dataclass(frozen=True)
class ArmSpec:
    """One arm of a deployment: which alias scores which share of the transactions."""

    name: str
    alias: str
    share: float  # of the transactions it scores; 0 for a warm standby
    returned: bool  # False: scored and logged, never returned to the caller (shadow)


@dataclass(frozen=True)
class ServingConfig:
    strategy: Strategy = Strategy.SINGLE
    canary_share: float = DEFAULT_CANARY_SHARE
    ab_share: float = DEFAULT_AB_SHARE

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> tuple[ServingConfig, list[str]]:
        """Read the registered model's tags; return the config and what was wrong with them.

        A bad tag never stops serving: an unknown strategy falls back to `single` (champion only),
        a bad share to its default, and the problem is reported.
        """
        problems = []
        raw = tags.get(STRATEGY_TAG, Strategy.SINGLE)
        try:
            strategy = Strategy(raw)
        except ValueError:
            known = [s.value for s in Strategy]
            problems.append(f"{STRATEGY_TAG}={raw!r} is not one of {known}: serving single")
            strategy = Strategy.SINGLE

        def share(tag: str, default: float) -> float:
            if tag not in tags:
                return default
            try:
                value = float(tags[tag])
            except ValueError:
                value = float("nan")
            if not 0 <= value <= 1:  # also rejects NaN
                problems.append(f"{tag}={tags[tag]!r} is not a number in [0, 1]: using {default}")
                return default
            return value

        canary, ab = share(CANARY_SHARE_TAG, DEFAULT_CANARY_SHARE), share(AB_SHARE_TAG, DEFAULT_AB_SHARE)
        return cls(strategy, canary, ab), problems

    def to_tags(self) -> dict[str, str]:
        """The tags that select this config."""
        return {
            STRATEGY_TAG: self.strategy.value,
            CANARY_SHARE_TAG: repr(self.canary_share),
            AB_SHARE_TAG: repr(self.ab_share),
        }

    def strategy_tags(self) -> dict[str, str]:
        """What the promotion job sets on every deployment change. Not the canary share: a
        rollout's steps set it (ml_assets.lib.rollout), and a deployment event must not reset it."""
        return {k: v for k, v in self.to_tags().items() if k != CANARY_SHARE_TAG}

    def arms(self) -> list[ArmSpec]:
        """The arms this strategy deploys. The first is always the champion's."""
        s = self.strategy
        if s is Strategy.BLUE_GREEN:
            standby = ArmSpec(PREVIOUS_CHAMPION, PREVIOUS_CHAMPION, 0.0, True)
            return [ArmSpec(CHAMPION, CHAMPION, 1.0, True), standby]
        if s is Strategy.CANARY:
            c = self.canary_share
            return [ArmSpec(CHAMPION, CHAMPION, 1 - c, True), ArmSpec(CANARY, CANARY, c, True)]
        if s is Strategy.SHADOW:
            return [ArmSpec(CHAMPION, CHAMPION, 1.0, True), ArmSpec(SHADOW, SHADOW, 1.0, False)]
        if s is Strategy.AB:
            b = self.ab_share
            return [ArmSpec("A", CHAMPION, 1 - b, True), ArmSpec("B", CHALLENGER, b, True)]
        return [ArmSpec(CHAMPION, CHAMPION, 1.0, True)]
