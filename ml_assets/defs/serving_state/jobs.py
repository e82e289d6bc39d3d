import dagster as dg

from ml_assets.defs.policies import daily_partitions

# The feed normally follows ingestion by declarative automation; this job runs it on demand for a
# range of days (`make run`, a backfill after the store was replaced).
serving_state_job = dg.define_asset_job(
    "serving_state_job",
    selection=dg.AssetSelection.assets("online_store_feed"),
    partitions_def=daily_partitions,
    description="Feed the online store from bronze: card histories and the next day's merchant risk.",
)
