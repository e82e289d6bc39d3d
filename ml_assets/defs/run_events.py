"""What an earlier step of the same run recorded, read back from the run's own events.

The retraining chain (snapshot -> model -> report) hands its versions along this way: the model
trains on the snapshot version its own run's `training_set` wrote, and the report judges the
version its own run's `fraud_model` registered. "The latest snapshot" or "whatever @challenger
points at" are shared by every run, so two retraining runs at once (the weekly schedule and the
retraining sensor) would each pick up the other's.
"""

import dagster as dg

# A re-execution from failure is a new run that skips the steps that had succeeded: what they
# recorded is in the run it re-executes (its parent), and so on back to the root.
MAX_LINEAGE = 20


def _lineage(instance: dg.DagsterInstance, run: dg.DagsterRun):
    """This run, then the run it re-executes, back to the first."""
    for _ in range(MAX_LINEAGE):
        yield run.run_id
        if not run.parent_run_id:
            return
        parent = instance.get_run_by_id(run.parent_run_id)
        if parent is None:
            return
        run = parent


def run_materialization(
    instance: dg.DagsterInstance, run: dg.DagsterRun, asset: str
) -> dict[str, dg.MetadataValue] | None:
    """The metadata of `asset`'s materialization in this run (or in the run it re-executes), the
    last one if there are several; None when the run did not materialize it (a run of this step
    alone)."""
    key = dg.AssetKey(asset)
    for run_id in _lineage(instance, run):
        records = instance.get_records_for_run(
            run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION, ascending=False
        ).records
        for record in records:
            materialization = record.asset_materialization
            if materialization is not None and materialization.asset_key == key:
                return dict(materialization.metadata)
    return None


def latest_materialization(instance: dg.DagsterInstance, asset: str) -> dict[str, dg.MetadataValue] | None:
    """The metadata of `asset`'s latest materialization on the instance: for a step run on its
    own, without the upstream step in its run (the caller says so in its log)."""
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    if event is None or event.asset_materialization is None:
        return None
    return dict(event.asset_materialization.metadata)
