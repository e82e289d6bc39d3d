import dagster as dg

from ml_assets.defs.policies import daily_partitions

# Features normally follow ingestion by declarative automation; this job runs them on demand
# (a backfill, `make run`) for a day or a range of days.
features_job = dg.define_asset_job(
    "features_job",
    selection=dg.AssetSelection.groups("features"),
    partitions_def=daily_partitions,
    description="Build the dbt features (and run every dbt test) for a day or a range of days.",
)
