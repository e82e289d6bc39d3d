"""The Dagster instance file (dagster.yaml), rendered from ONE template for every place it runs.

`deploy/dagster.yaml.template` holds what every instance shares (PostgreSQL storage, the run queue
and its limits, the warehouse pool, run monitoring and retries); the variables here say what
differs: the run launcher, the database's host, the step logs. `deploy/dagster.yaml` (production,
Kubernetes) is `render(PRODUCTION)`, checked in and held equal to it by test_deploy_config; the
local stack (`ml_assets.stack`) writes `render(stack(...))` into its DAGSTER_HOME.

Regenerate the checked-in file after editing the template: `python -m ml_assets.lib.dagster_instance`.
"""

from __future__ import annotations

from pathlib import Path
from string import Template

from ml_assets.lib.paths import REPO_ROOT

TEMPLATE = REPO_ROOT / "deploy" / "dagster.yaml.template"
DEPLOYED = REPO_ROOT / "deploy" / "dagster.yaml"

K8S_LAUNCHER = """\
run_launcher:
  module: dagster_k8s
  class: K8sRunLauncher
  config:
    job_namespace: {env: DAGSTER_K8S_JOB_NAMESPACE}
    service_account_name: {env: DAGSTER_K8S_SERVICE_ACCOUNT}
    instance_config_map: {env: DAGSTER_K8S_INSTANCE_CONFIG_MAP}
    postgres_password_secret: {env: DAGSTER_K8S_PG_PASSWORD_SECRET}
    dagster_home: /opt/dagster/dagster_home
    load_incluster_config: true
    # Run pods get the code location's environment (deploy/production.env.example) and its
    # secrets; their image is the code location's own.
    env_config_maps:
      - {env: ML_ASSETS_ENV_CONFIG_MAP}
    env_secrets:
      - {env: ML_ASSETS_ENV_SECRET}
    # Steps run in process inside the run's pod (ML_ASSETS_EXECUTOR=in_process): one import of the stack per
    # run. Size the pod for the largest step (training); LightGBM's num_threads <= cpu.
    run_k8s_config:
      container_config:
        resources:
          requests: {cpu: "2", memory: 8Gi}
          limits: {cpu: "2", memory: 8Gi}
"""

# The daemon starts each run as a subprocess of its own on this machine; the run's steps are
# subprocesses of that (ML_ASSETS_EXECUTOR=multiprocess, set in the stack's environment).
DEFAULT_LAUNCHER = """\
run_launcher:
  module: dagster._core.launcher
  class: DefaultRunLauncher
"""

S3_COMPUTE_LOGS = """\
compute_logs:
  module: dagster_aws.s3.compute_log_manager
  class: S3ComputeLogManager
  config:
    bucket: {env: DAGSTER_COMPUTE_LOG_BUCKET}
    prefix: {env: DAGSTER_COMPUTE_LOG_PREFIX}
"""

PRODUCTION: dict[str, str] = {
    "title": " in production: each run in its own Kubernetes Job, run and event storage\n"
    "# in PostgreSQL, step logs on S3.",
    "intro": "# Mount it as $DAGSTER_HOME/dagster.yaml in the webserver, the daemon and the run pods (the\n"
    "# ConfigMap named by DAGSTER_K8S_INSTANCE_CONFIG_MAP). Every setting of an environment comes\n"
    "# from an environment variable: nothing secret in here. ml_assets_tests/test_deploy_config.py\n"
    "# validates it against Dagster's own schema.\n",
    "pg_host": "{env: DAGSTER_PG_HOST}",
    "pg_port": "{env: DAGSTER_PG_PORT}",
    "pg_db": "{env: DAGSTER_PG_DB}",
    "pg_user": "{env: DAGSTER_PG_USER}",
    "pg_password_from": "from a Kubernetes Secret",
    "run_launcher": K8S_LAUNCHER,
    "run_unit": "pods",
    # Dagster's `concurrency` block takes literal numbers only (no {env: ...}): the render sets it.
    "max_concurrent_runs": "8",
    "backfill_run_limit": "4",
    "warehouse_kind": "on MotherDuck",
    "pool_default_limit": "1",
    "run_worker": "pod dies (node drained, OOM)",
    "compute_logs": S3_COMPUTE_LOGS,
}


def stack(*, pg_port: int, compute_logs_dir: Path, max_concurrent_runs: int = 4) -> dict[str, str]:
    """The variables of the one-box stack: the default launcher, PostgreSQL on loopback, step logs
    in a folder (the password still comes from the environment: the stack's stack.env)."""
    return {
        "title": " of the one-box stack (python -m ml_assets.stack): runs as local processes,\n"
        "# run and event storage in the stack's PostgreSQL, step logs in a folder.",
        "intro": "# Written by `make stack` into the stack's DAGSTER_HOME at every start.\n",
        "pg_host": "127.0.0.1",
        "pg_port": str(pg_port),
        "pg_db": "dagster",
        "pg_user": "dagster",
        "pg_password_from": "from the stack's stack.env",
        "run_launcher": DEFAULT_LAUNCHER,
        "run_unit": "processes",
        # Two cores: every run is a process importing the code location, and its steps more.
        "max_concurrent_runs": str(max_concurrent_runs),
        "backfill_run_limit": str(max(1, max_concurrent_runs // 2)),
        "warehouse_kind": "a file on this machine",
        "pool_default_limit": "1",
        "run_worker": "process dies",
        "compute_logs": (
            "compute_logs:\n"
            "  module: dagster._core.storage.local_compute_log_manager\n"
            "  class: LocalComputeLogManager\n"
            "  config:\n"
            f"    base_dir: {compute_logs_dir}\n"
        ),
    }


def render(values: dict[str, str]) -> str:
    """The template with `values` substituted; every variable must be given (KeyError otherwise)."""
    return Template(TEMPLATE.read_text()).substitute(values)


if __name__ == "__main__":
    DEPLOYED.write_text(render(PRODUCTION))
    print(f"wrote {DEPLOYED}")
