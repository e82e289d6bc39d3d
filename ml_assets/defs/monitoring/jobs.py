import dagster as dg

from ml_assets.defs.policies import daily_partitions

monitoring_job = dg.define_asset_job(
    "monitoring_job",
    selection=dg.AssetSelection.groups("monitoring"),
    partitions_def=daily_partitions,
    description="Score the day with the deployed models, measure drift and live performance.",
)
