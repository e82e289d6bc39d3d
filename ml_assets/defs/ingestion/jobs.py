import dagster as dg

from ml_assets.defs.policies import daily_partitions

ingestion_job = dg.define_asset_job(
    "ingestion_job",
    selection=dg.AssetSelection.groups("ingestion"),
    partitions_def=daily_partitions,
    description="Ingest one day (or a range) of transactions and labels from landing into bronze.",
)

# Upstream finishes a day shortly after midnight UTC; ingest it at 01:00. The landing sensor
# also catches late or re-delivered files.
ingestion_schedule = dg.build_schedule_from_partitioned_job(ingestion_job, hour_of_day=1)
