"""Notice new or re-delivered landing files and ingest the days they touch.

What is done lives in the lake, not in the cursor: ingestion records, for each day it takes in, a
fingerprint of the files it read (name, size and modification time of every `*.csv[.gz]`), after
the day's data is written (`tables.DELIVERED`). A day is requested when landing's fingerprint now
differs from the lake's, so a fresh or reset cursor, a moved DAGSTER_HOME or a `make run` before
`make dev` asks only for what really changed. The run key carries the fingerprint, so Dagster
launches a delivery once while its run is queued or running.
"""

import hashlib
from datetime import date, timedelta

import dagster as dg

from ml_assets.defs.ingestion.assets import delivered
from ml_assets.defs.policies import daily_partitions
from ml_assets.defs.resources import LakeResource, LandingResource
from ml_assets.lib.landing import fingerprint

ASSETS = {"transactions": dg.AssetKey("raw_transactions"), "labels": dg.AssetKey("raw_labels")}
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


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
def landing_sensor(
    context: dg.SensorEvaluationContext, landing: LandingResource, lake: LakeResource
) -> dg.SensorResult:
    valid_days = set(daily_partitions.get_partition_keys())
    requests, skipped = [], []
    for feed, asset in ASSETS.items():
        done = delivered(lake, feed)
        changed = {}
        for day in landing.partition_days(feed):
            if day not in valid_days:
                skipped.append(f"{feed}/date={day}")
                continue
            fp = fingerprint(landing.partition_dir(feed, day))
            if done.get(day) != fp:
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
    if skipped:
        context.log.info(f"ignoring folders outside the partition range: {', '.join(skipped[:10])}")
    if not requests:
        return dg.SensorResult(skip_reason="every landing day is ingested as delivered")
    return dg.SensorResult(run_requests=requests)
