"""The nightly routine: yesterday's files into bronze, its features, then its scores and monitoring.

One run, so a failed ingestion gate (a blocking check) stops features and monitoring of that day.
The landing sensor covers late or re-delivered files in between, and declarative automation
rebuilds the features they touch.
"""

import dagster as dg

from ml_assets.defs.policies import daily_partitions

daily_job = dg.define_asset_job(
    "daily_job",
    selection=dg.AssetSelection.groups("ingestion", "features", "monitoring"),
    partitions_def=daily_partitions,
    description="Ingest a day, build its features, score it and monitor drift and live performance.",
)

daily_schedule = dg.build_schedule_from_partitioned_job(
    daily_job, hour_of_day=1, default_status=dg.DefaultScheduleStatus.RUNNING
)
