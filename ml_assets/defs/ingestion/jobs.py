import dagster as dg

from ml_assets.defs.policies import daily_partitions

ingestion_job = dg.define_asset_job(
    "ingestion_job",
    selection=dg.AssetSelection.groups("ingestion"),
    partitions_def=daily_partitions,
    description="Ingest one day (or a range) of transactions and labels from landing into bronze.",
)
