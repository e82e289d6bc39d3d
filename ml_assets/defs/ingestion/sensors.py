"""Notice new or re-delivered landing files and ingest the days they touch.

The cursor maps each feed's day to a fingerprint of the files that count for it (name, size and
modification time of every `*.csv[.gz]`). A day is requested when its fingerprint changes; the run
key carries the fingerprint, so Dagster never launches the same delivery twice even if a tick
fails after requesting runs (the cursor is only saved on a successful tick).
"""

import hashlib
import json
from datetime import date, timedelta

import dagster as dg

from ml_assets.defs.policies import daily_partitions
from ml_assets.defs.resources import LandingResource
from ml_assets.lib.landing import list_partition

ASSETS = {"transactions": dg.AssetKey("raw_transactions"), "labels": dg.AssetKey("raw_labels")}
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


def fingerprint(landing: LandingResource, feed: str, day: str) -> str:
    """What upstream has delivered for a day, as a short hash (ignored entries don't count)."""
    parts = []
    for entry in list_partition(landing.partition_dir(feed, day)):
        if entry.ignored_because is None:
            st = entry.path.stat()
            parts.append(f"{entry.path.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _ranges(days: list[str]) -> list[tuple[str, str]]:
    """Consecutive days grouped into (first, last) ranges, so a backlog becomes few runs."""
    out: list[tuple[str, str]] = []
    for d in sorted(days):
        if out and date.fromisoformat(out[-1][1]) + timedelta(days=1) == date.fromisoformat(d):
            out[-1] = (out[-1][0], d)
        else:
            out.append((d, d))
    return out


@dg.sensor(
    target=dg.AssetSelection.assets(*ASSETS.values()),
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests ingestion of every landing day whose files are new or re-delivered.",
)
def landing_sensor(context: dg.SensorEvaluationContext, landing: LandingResource) -> dg.SensorResult:
    cursor: dict[str, dict[str, str]] = json.loads(context.cursor or "{}")
    valid_days = set(daily_partitions.get_partition_keys())
    requests, skipped = [], []
    for feed, asset in ASSETS.items():
        seen = cursor.setdefault(feed, {})
        changed = {}
        for day in landing.partition_days(feed):
            if day not in valid_days:
                skipped.append(f"{feed}/date={day}")
                continue
            fp = fingerprint(landing, feed, day)
            if seen.get(day) != fp:
                changed[day] = fp
        for first, last in _ranges(list(changed)):
            key = hashlib.sha256(
                "|".join(changed[d] for d in sorted(changed) if first <= d <= last).encode()
            ).hexdigest()[:16]
            tags = {RANGE_START: first, RANGE_END: last} if first != last else {}
            requests.append(
                dg.RunRequest(
                    run_key=f"{feed}:{first}:{last}:{key}",
                    asset_selection=[asset],
                    partition_key=first if first == last else None,
                    tags=tags,
                )
            )
        seen.update(changed)
    if skipped:
        context.log.info(f"ignoring folders outside the partition range: {', '.join(skipped[:10])}")
    if not requests:
        return dg.SensorResult(skip_reason="no new or re-delivered landing files", cursor=json.dumps(cursor))
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(cursor))
