"""Decisions the automation carries out as runs (a promotion, a canary's promotion or abort), seen
through until one of their runs succeeds.

Dagster deduplicates run requests by run key, failed runs included: a decision whose run failed
(the registry down while it ran, say) would never be asked for again under the same key. So every
decision's runs carry the decision as a tag, and the sensor that made it looks at the last one on
the instance: failed, it asks again under a new run key (`<decision>-attempt-2`, ...), up to
MAX_ATTEMPTS runs; then it gives up, alerts once, and says so in its skip reason.
"""

from dataclasses import dataclass

import dagster as dg

from ml_assets.defs.resources import AlertsResource

MAX_ATTEMPTS = 3
DECISION_TAG = "ml_assets/decision"  # e.g. promote-fraud_detector-v4: the first run's run key
DECIDED_BY_TAG = "ml_assets/decided_by"  # the sensor that decided
ATTEMPT_TAG = "ml_assets/attempt"
# Put on the last failed run once the alert about it is sent: the next ticks see it and don't
# alert again (a record on the instance, not in the cursor, which a failed tick does not save).
GAVE_UP_TAG = "ml_assets/gave_up"


@dataclass(frozen=True)
class FollowUp:
    request: dg.RunRequest | None  # the next attempt, if one is due
    note: str  # what the sensor says about the decision


def first_request(decision: str, decided_by: str, run_config: dict, tags: dict[str, str]) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=decision,
        run_config=run_config,
        tags=tags | {DECISION_TAG: decision, DECIDED_BY_TAG: decided_by, ATTEMPT_TAG: "1"},
    )


def last_run(instance: dg.DagsterInstance, tags: dict[str, str]) -> dg.DagsterRun | None:
    """The newest run on the instance with these tags."""
    runs = instance.get_runs(dg.RunsFilter(tags=tags), limit=1)
    return runs[0] if runs else None


def _failure(instance: dg.DagsterInstance, run_id: str) -> str:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
    event = records[-1].event_log_entry.dagster_event if records else None
    return event.message if event and event.message else "no failure message"


def follow_up(instance: dg.DagsterInstance, decision: str, alerts: AlertsResource, log) -> FollowUp | None:
    """What to do about `decision` given its last run: None when it has none yet (ask for it)."""
    last = last_run(instance, {DECISION_TAG: decision})
    if last is None:
        return None
    attempt = int(last.tags.get(ATTEMPT_TAG, "1"))
    run = f"run {last.run_id[:8]}"
    # Only a failure is retried: a run still queued or running is waited for, and a canceled one
    # was stopped on purpose.
    if last.status != dg.DagsterRunStatus.FAILURE:
        return FollowUp(None, f"{decision}: attempt {attempt} is {last.status.value.lower()} ({run})")
    if attempt < MAX_ATTEMPTS:
        kept = {k: v for k, v in last.tags.items() if not k.startswith("dagster/") and k != GAVE_UP_TAG}
        request = dg.RunRequest(
            run_key=f"{decision}-attempt-{attempt + 1}",
            run_config=dict(last.run_config),
            tags=kept | {ATTEMPT_TAG: str(attempt + 1)},
        )
        note = f"{decision}: attempt {attempt} failed ({run}); asking again ({attempt + 1} of {MAX_ATTEMPTS})"
        return FollowUp(request, note)
    if GAVE_UP_TAG not in last.tags:
        alerts.send(
            log,
            f"Automation gave up: {decision}",
            f"{MAX_ATTEMPTS} runs failed, the last {last.run_id}: {_failure(instance, last.run_id)}",
        )
        instance.add_run_tags(last.run_id, {GAVE_UP_TAG: "alerted"})
    return FollowUp(None, f"gave up on {decision} after {MAX_ATTEMPTS} failed runs (last {run}); alert sent")
