"""Imported by the multiprocess executor's forkserver, once per run (ml_assets.definitions): loading
the code location here imports every module its steps need (dagster-dbt, dbt's adapter, the
stages' definitions, polars, deltalake), so each step's process forks with them in memory instead
of importing them again. Nothing runs: the Definitions built here are dropped; each step builds
its own from the modules already imported (a fraction of a second)."""

import deltalake  # noqa: F401  (every stage reads or writes the lake)

from ml_assets.definitions import defs

defs()
