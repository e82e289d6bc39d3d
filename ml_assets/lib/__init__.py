"""Dagster-free logic: contracts, lake I/O, feature math, metrics. Tested without Dagster."""
