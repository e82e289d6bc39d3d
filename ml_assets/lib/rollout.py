"""A canary's gradual rollout: its steps, the step it is at, and the guards each step is held to.
No Dagster.

A canary starts at the first step's share (default 5%, `ML_ASSETS_CANARY_STEPS`) and moves to the
next only when the guards of the step it is at pass on the traffic of that step. Where it is lives
in the registry, as registered-model tags beside the share the service reads
(`serving_config.ROLLOUT_TAGS`), so a reset cursor or a new Dagster instance finds it.

The guards that act at once are proxies, measured on the canary arm's scores of the step's
traffic against the scores the same version gave its own validation and holdout rows offline
(what the validation report passed it on):

- **score distribution**: PSI of the live scores against the offline ones;
- **alert rate**: the share of scores at or above the version's decision threshold (its
  `decision_threshold` tag; the guards' default without one), live against offline.

Not against the champion's: a canary that learned a drift the champion misses scores differently
from it, by design (in test_closed_loop's drift, the retrained canary scored 7.6% of a day's
transactions at or above 0.5 where the old champion scored none, score PSI 5.1 between them).
Those figures are in the evidence all the same, beside the guards.

Live scores come from the inference log (what the service served, arm `canary`, scored since the
step began; the champion's, arm `champion`, of the same time). A deployment with no live traffic
(batch scoring only) is judged on the batch predictions of the days monitored since the step
began instead; the evidence says which. The service records no per-arm errors or latency (its
503s are answered before any arm is chosen), so neither is a guard. Labelled outcomes join as
they mature: the live-performance verdict (`canary_sensor`'s `candidate_verdict`) can abort at
any step, and the last step promotes only once it holds up.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

import numpy as np
import polars as pl

from ml_assets.lib import evaluation, tables
from ml_assets.lib.serving_config import (
    CANARY_SHARE_TAG,
    CANARY_STARTED_TAG,
    CANARY_STEP_AS_OF_TAG,
    CANARY_STEP_STARTED_TAG,
    CANARY_STEP_TAG,
    CANARY_STEPS_TAG,
)

PASSED, FAILED, WAITING = "passed", "failed", "waiting"
SCORE_DECIMALS = 6  # what the proxies compare of a score (see judge)


def parse_steps(text: str) -> tuple[float, ...]:
    """ "0.05,0.25,0.5,1.0" -> (0.05, 0.25, 0.5, 1.0). Shares in (0, 1], strictly increasing."""
    try:
        steps = tuple(float(part) for part in text.split(","))
    except ValueError:
        steps = ()
    if not steps or not all(0 < s <= 1 for s in steps) or list(steps) != sorted(set(steps)):
        raise ValueError(f"canary steps {text!r}: shares in (0, 1], strictly increasing, comma-separated")
    return steps


@dataclass(frozen=True)
class RolloutState:
    steps: tuple[float, ...]
    step: int  # 1-based
    step_started_at: datetime
    step_as_of: date | None  # the newest batch-scored day when the step began
    started_at: datetime  # the rollout's first step

    @property
    def share(self) -> float:
        return self.steps[self.step - 1]

    @property
    def last(self) -> bool:
        return self.step == len(self.steps)

    def describe(self) -> str:
        return f"step {self.step} of {len(self.steps)} ({self.share:.0%})"


def state_from_tags(tags: dict[str, str]) -> RolloutState | None:
    """The rollout the registered model's tags record; None when there is none (a shadow, or a
    canary started before rollouts had steps: judged on labelled outcomes alone)."""
    if CANARY_STEPS_TAG not in tags or CANARY_STEP_TAG not in tags:
        return None
    as_of = tags.get(CANARY_STEP_AS_OF_TAG)
    return RolloutState(
        steps=parse_steps(tags[CANARY_STEPS_TAG]),
        step=int(tags[CANARY_STEP_TAG]),
        step_started_at=datetime.fromisoformat(tags[CANARY_STEP_STARTED_TAG]),
        step_as_of=date.fromisoformat(as_of) if as_of else None,
        started_at=datetime.fromisoformat(tags[CANARY_STARTED_TAG]),
    )


def step_tags(
    steps: tuple[float, ...], step: int, as_of: date | None, started_at: datetime | None = None
) -> dict[str, str]:
    """The tags that put a rollout at `step` (1-based) from now: the share the service serves, and
    where the step's evidence starts. `started_at`: the rollout's start (None: it starts now)."""
    now = datetime.now(UTC)
    return {
        CANARY_SHARE_TAG: repr(steps[step - 1]),
        CANARY_STEPS_TAG: ",".join(repr(s) for s in steps),
        CANARY_STEP_TAG: str(step),
        CANARY_STEP_STARTED_TAG: now.isoformat(),
        CANARY_STEP_AS_OF_TAG: as_of.isoformat() if as_of else "",
        CANARY_STARTED_TAG: (started_at or now).isoformat(),
    }


@dataclass(frozen=True)
class Guards:
    """The proxies' thresholds (MonitoringResource carries them)."""

    min_scores: int  # canary scores a step needs before its proxies are judged
    max_score_psi: float
    alert_threshold: float
    max_alert_rate_gap: float


def _alert_rate(scores: np.ndarray, threshold: float) -> float:
    return float(np.mean(scores >= threshold)) if scores.size else float("nan")


def judge(canary: np.ndarray, offline: np.ndarray, champion: np.ndarray, guards: Guards) -> dict:
    """The proxies on one step's live canary scores against the version's `offline` ones: each
    guard's status and the figures it was judged on, and the same figures against the champion
    arm's live scores of the step (context, not a guard)."""
    # At 6 decimals: two fits that agree differ in their last bits, and quantile edges are tied
    # scores (a tree ensemble's scores are piecewise constant), so unrounded, a difference of
    # 1e-17 would move every score across an edge.
    canary, offline, champion = (np.round(s, SCORE_DECIMALS) for s in (canary, offline, champion))
    out: dict = {
        "canary_scores": int(canary.size),
        "offline_scores": int(offline.size),
        "alert_threshold": guards.alert_threshold,
    }
    if champion.size:
        out["vs_champion"] = {
            "champion_scores": int(champion.size),
            "score_psi": round(evaluation.psi(champion, canary), 6) if canary.size else None,
            "champion_alert_rate": round(_alert_rate(champion, guards.alert_threshold), 6),
        }
    if not offline.size:
        why = ["the version has no offline scores to hold its live ones to (no training snapshot)"]
        return out | {"guards": {"score_distribution": FAILED, "alert_rate": FAILED}, "why": why}
    if canary.size < guards.min_scores:
        waiting = f"{canary.size} canary scores at this step, {guards.min_scores} needed"
        return out | {"guards": {"score_distribution": WAITING, "alert_rate": WAITING}, "why": [waiting]}
    psi = evaluation.psi(offline, canary)
    live_rate = _alert_rate(canary, guards.alert_threshold)
    offline_rate = _alert_rate(offline, guards.alert_threshold)
    gap = live_rate - offline_rate
    statuses = {
        "score_distribution": PASSED if psi <= guards.max_score_psi else FAILED,
        "alert_rate": PASSED if abs(gap) <= guards.max_alert_rate_gap else FAILED,
    }
    why = [
        f"score PSI {psi:.3f} vs its offline scores ({'<=' if psi <= guards.max_score_psi else '>'} "
        f"{guards.max_score_psi})",
        f"alert rate {live_rate:.2%} vs {offline_rate:.2%} offline (gap {gap:+.2%}, "
        f"{'within' if abs(gap) <= guards.max_alert_rate_gap else 'beyond'} {guards.max_alert_rate_gap:.0%})",
    ]
    return out | {
        "score_psi": round(psi, 6),
        "canary_alert_rate": round(live_rate, 6),
        "offline_alert_rate": round(offline_rate, 6),
        "guards": statuses,
        "why": why,
    }


def status(evidence: dict) -> str:
    """FAILED if any guard failed, else WAITING if any is waiting, else PASSED."""
    found = set(evidence["guards"].values())
    return FAILED if FAILED in found else WAITING if WAITING in found else PASSED


def step_scores(lake, state: RolloutState, version: str, champion: str) -> tuple[str, np.ndarray, np.ndarray]:
    """(source, the canary's scores, the champion's) of the traffic since the step began.

    The inference log when it holds canary traffic of this step (the champion's scores of the same
    time: none at a 100% step). Otherwise the batch predictions of the days monitored since the
    step began, on which both score every transaction.
    """
    if lake.exists(tables.INFERENCE_LOG):
        since = pl.col("scored_at") >= state.step_started_at
        log = (
            lake.scan(tables.INFERENCE_LOG)
            .filter(pl.col("scored_date") >= state.started_at.date(), pl.col("returned"))
            .select("arm", "model_version", "scored_at", "score")
            .collect()
        )
        canary = log.filter(since, pl.col("arm") == "canary", pl.col("model_version") == version)
        if canary.height:
            mine = log.filter(since, pl.col("arm") == "champion", pl.col("model_version") == champion)
            return "inference_log", canary["score"].to_numpy(), mine["score"].to_numpy()
    if not lake.exists(tables.BATCH_PREDICTIONS):
        return "batch_predictions", np.array([]), np.array([])
    days = lake.scan(tables.BATCH_PREDICTIONS)
    if state.step_as_of is not None:
        days = days.filter(pl.col("event_date") > state.step_as_of)
    batch = days.select("alias", "model_version", "score").collect()
    canary = batch.filter(pl.col("alias") == "canary", pl.col("model_version") == version)
    mine = batch.filter(pl.col("alias") == "champion", pl.col("model_version") == champion)
    return "batch_predictions", canary["score"].to_numpy(), mine["score"].to_numpy()


def newest_batch_day(lake) -> date | None:
    """The newest day batch predictions scored (a step's batch evidence starts after it)."""
    if not lake.exists(tables.BATCH_PREDICTIONS):
        return None
    return lake.scan(tables.BATCH_PREDICTIONS).select(pl.col("event_date").max()).collect().item()
