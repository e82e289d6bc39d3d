"""Partitioning and retry policies that every stage shares."""

import dagster as dg

from ml_assets.lib.settings import SETTINGS, value

DEFAULT_START_DATE = SETTINGS["ML_ASSETS_START_DATE"].default

# Partitions are structure, read when the code location loads (not per run): change the first
# day with ML_ASSETS_START_DATE. The simulator's demo days start on the same default.
daily_partitions = dg.DailyPartitionsDefinition(start_date=value("ML_ASSETS_START_DATE"))

# One run may cover a range of days (backfills, `make run`): each asset loops over the days, and
# records metadata for each one.
one_run_per_range = dg.BackfillPolicy.single_run()

# Steps that talk to storage or the registry retry transient faults with backoff, then fail
# with the error they saw. Read when the code location loads, as the partitions are.
storage_retry = dg.RetryPolicy(
    max_retries=3,
    delay=float(value("ML_ASSETS_STEP_RETRY_SECONDS")),
    backoff=dg.Backoff.EXPONENTIAL,
    jitter=dg.Jitter.PLUS_MINUS,
)
