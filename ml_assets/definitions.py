"""The code location: every stage's definitions under defs/, plus what cuts across them.

Importing this module is cheap: heavy libraries (mlflow, lightgbm, deltalake, dbt) are imported
inside the functions that use them, and Dagster calls `defs()` when it loads the location.
"""

from pathlib import Path

import dagster as dg

# The multiprocess executor starts each step in a process of its own. Spawned, each would import
# the code location again (~10 s a step on a loaded 2-core box); forked from a server that has
# loaded it once per run, a step starts in about a second (bench/stack.py measures both). The
# server is Python's forkserver: it forks from a process that only imported (no polars work, no
# OpenMP pool), which is what makes forking safe here, and it ends with the run's process.
MULTIPROCESS = dg.multiprocess_executor.configured(
    # deltalake, which the stages import only where they touch the lake, is read or written by
    # nearly every step: preloaded here, by name, so no module of the project imports it eagerly.
    {"start_method": {"forkserver": {"preload_modules": ["deltalake", "ml_assets.preloaded_location"]}}}
)


def _executor() -> dg.ExecutorDefinition:
    """The executor the setting ML_ASSETS_EXECUTOR names. In process by default: one import of the
    stack per run; multiprocess where steps of one run should run side by side (the stack)."""
    from ml_assets.lib.settings import value

    name = value("ML_ASSETS_EXECUTOR")
    if name == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    executors = {"in_process": dg.in_process_executor, "multiprocess": MULTIPROCESS}
    if name not in executors:
        raise ValueError(f"ML_ASSETS_EXECUTOR must be in_process, multiprocess or k8s, not {name!r}")
    return executors[name]


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions.merge(
        dg.load_from_defs_folder(path_within_project=Path(__file__).parent),
        dg.Definitions(
            executor=_executor(),
            # Declared here, running by default: the one Dagster adds when none is declared starts
            # stopped, and features would not follow ingestion until someone found its toggle.
            sensors=[
                dg.AutomationConditionSensorDefinition(
                    "default_automation_condition_sensor",
                    target=dg.AssetSelection.all(),
                    default_status=dg.DefaultSensorStatus.RUNNING,
                    description="Declarative automation: the dbt features follow new ingestions "
                    "once their blocking checks pass.",
                )
            ],
        ),
    )
