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

Two more act at once on live traffic, as a service mesh's canary analysis does:

- **errors**: the share of the canary's attempts that failed (its model raised, or gave a score
  that is not finite; the champion answered those), at most `max_error_rate`;
- **p99 latency**: the request's time until the canary's scores, at the 99th percentile, against
  the champion arm's of the same step (or of the rollout's earlier steps, at a step where the
  champion serves nothing): at most `max_p99_ratio` times it. A p99 within `p99_budget_ms`
  always passes: below it, a difference is the box's noise, not the model's.

Live scores, failures and latencies come from the inference log (what the service served, arm
`canary`, scored since the step began; the champion's, arm `champion`, of the same time). A
deployment with no live traffic (batch scoring only) is judged on the batch predictions of the
days monitored since the step began instead, where neither errors nor latency exist: those two
guards are then `not_applicable`, and the evidence says which source it was. Labelled outcomes
join as they mature: the live-performance verdict (`canary_sensor`'s `candidate_verdict`) can
abort at any step, and the last step promotes only once it holds up.
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
from ml_assets.serving.inference_log import SCHEMA

PASSED, FAILED, WAITING, NOT_APPLICABLE = "passed", "failed", "waiting", "not_applicable"
PROXIES, LIVE = ("score_distribution", "alert_rate"), ("errors", "p99_latency")
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
    """The guards' thresholds (MonitoringResource carries them)."""

    min_scores: int  # canary scores (and attempts, and latencies) a step needs before it is judged
    max_score_psi: float
    alert_threshold: float
    max_alert_rate_gap: float
    max_error_rate: float
    max_p99_ratio: float
    p99_budget_ms: float


@dataclass(frozen=True)
class StepTraffic:
    """What a step's traffic gave each arm. `source`: inference_log or batch_predictions; the
    latencies and failures exist only in the inference log (None from batch predictions)."""

    source: str
    canary: np.ndarray  # the canary's scores
    champion: np.ndarray  # the champion's, of the same time
    canary_failures: int | None = None
    canary_latency_ms: np.ndarray | None = None
    champion_latency_ms: np.ndarray | None = None  # the step's, or the rollout's earlier steps'
    champion_latency_from: str | None = None  # "step" or "rollout"


def _alert_rate(scores: np.ndarray, threshold: float) -> float:
    return float(np.mean(scores >= threshold)) if scores.size else float("nan")


def judge(traffic: StepTraffic, offline: np.ndarray, guards: Guards) -> dict:
    """The guards on one step's live traffic: each guard's status and the figures it was judged
    on; the proxies hold the canary's scores to the version's `offline` ones, and beside them are
    the same figures against the champion arm's live scores of the step (context, not a guard)."""
    # At 6 decimals: two fits that agree differ in their last bits, and quantile edges are tied
    # scores (a tree ensemble's scores are piecewise constant), so unrounded, a difference of
    # 1e-17 would move every score across an edge.
    canary, offline, champion = (
        np.round(s, SCORE_DECIMALS) for s in (traffic.canary, offline, traffic.champion)
    )
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
    statuses, why, figures = _proxies(canary, offline, guards)
    live = _live(traffic, guards)
    return out | figures | live["figures"] | {"guards": statuses | live["guards"], "why": why + live["why"]}


def _proxies(canary: np.ndarray, offline: np.ndarray, guards: Guards) -> tuple[dict, list[str], dict]:
    if not offline.size:
        why = ["the version has no offline scores to hold its live ones to (no training snapshot)"]
        return dict.fromkeys(PROXIES, FAILED), why, {}
    if canary.size < guards.min_scores:
        return (
            dict.fromkeys(PROXIES, WAITING),
            [f"{canary.size} canary scores at this step, {guards.min_scores} needed"],
            {},
        )
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
    figures = {
        "score_psi": round(psi, 6),
        "canary_alert_rate": round(live_rate, 6),
        "offline_alert_rate": round(offline_rate, 6),
    }
    return statuses, why, figures


def _live(traffic: StepTraffic, guards: Guards) -> dict:
    """The errors and p99 guards: the service's own figures, so only on the inference log."""
    if traffic.canary_failures is None:
        why = f"errors and p99 latency: not applicable on {traffic.source} (no live traffic)"
        return {"guards": dict.fromkeys(LIVE, NOT_APPLICABLE), "why": [why], "figures": {}}
    failures, scored = traffic.canary_failures, traffic.canary.size
    attempts = failures + scored
    statuses, why, figures = {}, [], {"canary_failures": failures, "canary_attempts": attempts}
    # A canary failing beyond the bound on what has come so far fails now: more traffic can't
    # bring the share under it once it is over it for the attempts a judgement needs.
    if attempts < guards.min_scores and failures <= guards.max_error_rate * guards.min_scores:
        statuses["errors"] = WAITING
        why.append(f"{attempts} canary attempts at this step, {guards.min_scores} needed")
    else:
        rate = failures / max(attempts, guards.min_scores)
        statuses["errors"] = PASSED if rate <= guards.max_error_rate else FAILED
        figures["canary_error_rate"] = round(rate, 6)
        why.append(
            f"errors {failures} of {attempts} canary attempts ({rate:.2%}, "
            f"{'within' if rate <= guards.max_error_rate else 'beyond'} {guards.max_error_rate:.0%})"
        )
    mine, theirs = traffic.canary_latency_ms, traffic.champion_latency_ms
    if mine.size < guards.min_scores or theirs.size < guards.min_scores:
        statuses["p99_latency"] = WAITING
        why.append(
            f"p99 latency: {mine.size} canary and {theirs.size} champion latencies, {guards.min_scores} "
            "each needed"
        )
        return {"guards": statuses, "why": why, "figures": figures}
    p99, reference = float(np.percentile(mine, 99)), float(np.percentile(theirs, 99))
    bound = max(guards.max_p99_ratio * reference, guards.p99_budget_ms)
    statuses["p99_latency"] = PASSED if p99 <= bound else FAILED
    figures |= {
        "canary_p99_ms": round(p99, 3),
        "champion_p99_ms": round(reference, 3),
        "champion_p99_from": traffic.champion_latency_from,
    }
    why.append(
        f"p99 latency {p99:.1f} ms vs the champion's {reference:.1f} ms ({traffic.champion_latency_from}; "
        f"{'within' if p99 <= bound else 'beyond'} {bound:.1f} ms: {guards.max_p99_ratio}x it, or "
        f"{guards.p99_budget_ms:g} ms)"
    )
    return {"guards": statuses, "why": why, "figures": figures}


def status(evidence: dict) -> str:
    """FAILED if any guard failed, else WAITING if any is waiting, else PASSED (a guard that is not
    applicable to the step's source holds nothing up)."""
    found = set(evidence["guards"].values())
    return FAILED if FAILED in found else WAITING if WAITING in found else PASSED


def step_traffic(lake, state: RolloutState, version: str, champion: str) -> StepTraffic:
    """What the traffic since the step began gave the canary and the champion.

    The inference log when it holds canary traffic of this step: the canary's scores, failures and
    latencies, and the champion's scores and latencies of the same time (no scores at a 100% step;
    its latencies then come from the rollout's earlier steps). Otherwise the batch predictions of
    the days monitored since the step began, on which both score every transaction.
    """
    if lake.exists(tables.INFERENCE_LOG):
        log = lake.scan(tables.INFERENCE_LOG)
        names = log.collect_schema().names()
        # Logs drained before latencies and failures were: null for those rows.
        extra = [
            pl.col(c) if c in names else pl.lit(None, SCHEMA[c]).alias(c) for c in ("latency_ms", "error")
        ]
        rows = (
            log.filter(
                pl.col("scored_date") >= state.started_at.date(), pl.col("scored_at") >= state.started_at
            )
            .select("transaction_id", "arm", "model_version", "scored_at", "score", "returned", *extra)
            .collect()
        )
        step = rows.filter(pl.col("scored_at") >= state.step_started_at)
        canary = step.filter(pl.col("arm") == "canary", pl.col("model_version") == version)
        scored = canary.filter(pl.col("returned"))
        failed = canary.filter(pl.col("error").is_not_null())
        if scored.height or failed.height:
            mine = rows.filter(
                pl.col("arm") == "champion",
                pl.col("model_version") == champion,
                pl.col("returned"),
                # A row the champion answered for a failed canary waited for both.
                ~pl.col("transaction_id").is_in(failed["transaction_id"].implode()),
            )
            of_step = mine.filter(pl.col("scored_at") >= state.step_started_at)
            reference, source = (of_step, "step") if of_step.height else (mine, "rollout")
            return StepTraffic(
                "inference_log",
                scored["score"].to_numpy(),
                of_step["score"].to_numpy(),
                canary_failures=failed.height,
                canary_latency_ms=scored["latency_ms"].drop_nulls().to_numpy(),
                champion_latency_ms=reference["latency_ms"].drop_nulls().to_numpy(),
                champion_latency_from=source,
            )
    if not lake.exists(tables.BATCH_PREDICTIONS):
        return StepTraffic("batch_predictions", np.array([]), np.array([]))
    days = lake.scan(tables.BATCH_PREDICTIONS)
    if state.step_as_of is not None:
        days = days.filter(pl.col("event_date") > state.step_as_of)
    batch = days.select("alias", "model_version", "score").collect()
    canary = batch.filter(pl.col("alias") == "canary", pl.col("model_version") == version)
    mine = batch.filter(pl.col("alias") == "champion", pl.col("model_version") == champion)
    return StepTraffic("batch_predictions", canary["score"].to_numpy(), mine["score"].to_numpy())


def newest_batch_day(lake) -> date | None:
    """The newest day batch predictions scored (a step's batch evidence starts after it)."""
    if not lake.exists(tables.BATCH_PREDICTIONS):
        return None
    return lake.scan(tables.BATCH_PREDICTIONS).select(pl.col("event_date").max()).collect().item()
