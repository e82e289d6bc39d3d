"""Imported by the multiprocess executor's forkserver, once per run (ml_assets.definitions names it,
with deltalake beside it): loading the code location here imports every module its steps need
(dagster-dbt, dbt's adapter, the stages' definitions, polars), so each step's process forks with
them in memory instead of importing them again. Nothing runs: the Definitions built here are
dropped; each step builds its own from the modules already imported (a fraction of a second)."""

from ml_assets.definitions import defs

defs()
