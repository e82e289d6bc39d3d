"""The external systems the pipeline talks to, each a resource with a real local implementation.

This is the one place that decides where things live: local folders under `ML_ASSETS_DATA_DIR`
by default, object storage and servers when the environment says so (see deploy/).
"""

import sys
from collections.abc import Collection
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import polars as pl
from pydantic import Field

from ml_assets.lib import paths
from ml_assets.lib.gates import Thresholds
from ml_assets.lib.settings import SETTINGS, value


class LakeResource(dg.ConfigurableResource):
    """Delta tables under one root: a local folder or an object-store URI (s3://...).

    Writes replace exactly one partition (a predicate overwrite on a table partitioned by that
    column), after checking the frame's schema: delta-rs casts some mismatches silently.

    On S3, delta-rs 1.6 commits with a conditional PUT (If-None-Match: *, storage option
    `conditional_put=etag`, its default), so concurrent writers never overwrite each other's
    commit. The store must support conditional writes (AWS S3 does; so do MinIO and R2). It no
    longer offers a DynamoDB lock, and AWS_S3_ALLOW_UNSAFE_RENAME changes nothing.
    """

    root: str = Field(description="Root of the lake: a folder, or a URI such as s3://bucket/lake.")
    storage_options: dict[str, str] = Field(
        default_factory=dict,
        description="delta-rs and polars storage options for object stores (endpoint, conditional put).",
    )

    @classmethod
    def from_env(cls) -> "LakeResource":
        """The lake the environment names: `ML_ASSETS_LAKE_URI` and `ML_ASSETS_LAKE_STORAGE_OPTIONS`."""
        return cls(root=paths.lake_uri(), storage_options=paths.lake_storage_options())

    def uri(self, table: str) -> str:
        return f"{self.root.rstrip('/')}/{table}"

    def _options(self) -> dict[str, str] | None:
        return dict(self.storage_options) or None

    def exists(self, table: str) -> bool:
        from deltalake import DeltaTable

        return DeltaTable.is_deltatable(self.uri(table), storage_options=self._options())

    def version(self, table: str) -> int | None:
        from deltalake import DeltaTable

        if not self.exists(table):
            return None
        return DeltaTable(self.uri(table), storage_options=self._options()).version()

    def write_partitions(
        self,
        table: str,
        frame: pl.DataFrame,
        *,
        partition_column: str,
        partitions: list[date],
        schema: dict[str, pl.DataType],
    ) -> int:
        """Replace the given partitions of `table` with `frame`, in one commit; return its version.

        Partitions with no rows in `frame` end up empty: that is what replacing them means. A
        concurrent writer of the same partitions makes one of the two fail with deltalake's
        CommitFailedError (nothing of it is committed); the step's retry policy runs it again.
        """
        from deltalake import ColumnProperties, WriterProperties

        if dict(frame.schema) != schema:
            raise ValueError(f"refusing to write {table}: schema {dict(frame.schema)} != {schema}")
        stray = frame.filter(~pl.col(partition_column).is_in(partitions)).height
        if stray:
            raise ValueError(f"refusing to write {table}: {stray} rows outside {partitions}")
        days = ", ".join(f"'{d.isoformat()}'" for d in partitions)
        return self._commit(
            table,
            _arrow(frame),
            partition_by=[partition_column],
            mode="overwrite",
            predicate=f"{partition_column} IN ({days})",
            # Dictionary encoding costs ~40% of write time on high-cardinality columns (ids,
            # timestamps, amounts) and buys little there; snappy still compresses the rest.
            # Min/max statistics of text columns (ids, mostly) cost ~20% of write time and skip
            # no file: a day's ids span the whole range. Numbers and times keep theirs.
            writer_properties=WriterProperties(
                compression="SNAPPY",
                default_column_properties=ColumnProperties(dictionary_enabled=False),
                column_properties={
                    c: ColumnProperties(dictionary_enabled=False, statistics_enabled="NONE")
                    for c, dtype in schema.items()
                    if dtype == pl.String()
                },
            ),
        )

    def replace_table(self, table: str, frame) -> int:
        """Replace a whole (unpartitioned) table with `frame` (a polars frame, or an Arrow
        RecordBatchReader to stream), as a new version; return it.

        Older versions stay readable by time travel: that is what pins a training snapshot.
        """
        data = _arrow(frame) if isinstance(frame, pl.DataFrame) else frame
        # A predicate, though it matches every row: delta-rs 1.6 lets a plain overwrite of a table
        # with no files yet commit over a concurrent writer's (both frames stay). With a predicate
        # one of them gets CommitFailedError. It costs ~0.05 s per million rows.
        return self._commit(
            table, data, partition_by=None, mode="overwrite", schema_mode="overwrite", predicate="true"
        )

    def _commit(self, table: str, data, partition_by: list[str] | None, **write_options) -> int:
        """Write `data` to `table` (created first if needed) as one commit; return its version.

        The version the commit is made against is the one the handle read on opening: a writer
        that committed in between makes this commit fail (CommitFailedError), never merge.
        """
        from deltalake import write_deltalake

        handle = self._open_or_create(table, data.schema, partition_by=partition_by)
        commit_hook("before", table)
        write_deltalake(handle, data, **write_options)
        commit_hook("after", table)
        return handle.version()

    def _open_or_create(self, table: str, schema, partition_by: list[str] | None):
        """A handle on `table`, created empty first if it doesn't exist yet.

        Writing through the handle makes `handle.version()` this commit's version, not that of
        whoever committed next. Creating first, as its own commit: two writers that both create
        a table with their data in the same instant both succeed on delta-rs 1.6 (the second
        retries as version 1 without removing the first one's files), so a partition could hold
        both frames. Against an existing table the second gets CommitFailedError instead.
        """
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        try:
            return DeltaTable(self.uri(table), storage_options=self._options())
        except TableNotFoundError:
            DeltaTable.create(
                self.uri(table),
                schema,
                mode="ignore",
                partition_by=partition_by,
                storage_options=self._options(),
            )
            # Opened again: if another writer created it first, this sees its table.
            return DeltaTable(self.uri(table), storage_options=self._options())

    def append(self, table: str, frame: pl.DataFrame, *, partition_column: str) -> int:
        """Append `frame` to `table` (partitioned by `partition_column`) in one commit; return its
        version. Columns the table lacks are added (schema_mode="merge"): a new feature logged by
        a new model grows the table instead of failing the write."""
        return self._commit(
            table, _arrow(frame), partition_by=[partition_column], mode="append", schema_mode="merge"
        )

    def scan(self, table: str, version: int | None = None) -> pl.LazyFrame:
        return pl.scan_delta(self.uri(table), version=version, storage_options=self._options())

    def read_partitions(self, table: str, partition_column: str, partitions: list[date]) -> pl.DataFrame:
        """Rows of the given partitions (empty, without columns, if the table doesn't exist yet)."""
        if not self.exists(table):
            return pl.DataFrame()
        return self.scan(table).filter(pl.col(partition_column).is_in(partitions)).collect()


def commit_hook(stage: str, table: str) -> None:
    """Called by every lake write with stage "before" (the table's version is read, nothing of
    this write is written or committed yet) and "after" (delta-rs has committed it).

    It does nothing. It exists for the fault tests, which replace it to hold a writer at one of
    those two points: to force a real commit conflict (another writer commits meanwhile, then
    this one's delta-rs commit fails) or to SIGKILL a run just before or after its commit,
    deterministically instead of by timing.
    """


def _arrow(frame: pl.DataFrame):
    # Plain (not large/view) string arrays: delta-rs writes them ~1.5x faster.
    return frame.to_arrow(compat_level=pl.CompatLevel.oldest())


class OnlineStoreResource(dg.ConfigurableResource):
    """The serving's online store (ml_assets.serving.online_store): card histories, merchant risk and
    the queue of decisions. The pipeline feeds it (`online_store_feed`) and drains it
    (`inference_log`); the scoring service reads and appends on every request."""

    url: str = Field(
        description="sqlite:///path/online.db (one host) or redis://[user:password@]host:port/db."
    )

    def open(self):
        """The store (a context manager), its lookback the features' card lookback."""
        from ml_assets.serving.features import FeatureParams
        from ml_assets.serving.online_store import open_store

        return open_store(self.url, lookback_days=FeatureParams.from_dbt_project().card_lookback_days)

    def describe(self) -> str:
        """The URL without credentials: what metadata may show."""
        from ml_assets.serving.online_store import redacted

        return redacted(self.url)


class LandingResource(dg.ConfigurableResource):
    """The upstream feed's landing zone: read-only for us, one folder per feed and day."""

    root: str = Field(description="Folder holding <feed>/date=YYYY-MM-DD/*.csv[.gz].")

    def partition_dir(self, feed: str, day: str) -> Path:
        return Path(self.root) / feed / f"date={day}"

    def partition_days(self, feed: str) -> list[str]:
        """The days that have a partition folder, oldest first."""
        base = Path(self.root) / feed
        if not base.is_dir():
            return []
        return sorted(p.name.removeprefix("date=") for p in base.glob("date=*") if p.is_dir())


class WarehouseResource(dg.ConfigurableResource):
    """The dbt warehouse (DuckDB locally). Python assets read dbt models from it, read-only."""

    path: str = Field(description="DuckDB database file dbt builds into.")

    def connect(self):
        """A read-only DuckDB connection (a context manager), its memory bounded as dbt's is."""
        import duckdb

        return duckdb.connect(self.path, read_only=True, config={"memory_limit": paths.duckdb_memory_limit()})

    def query(self, sql: str) -> pl.DataFrame:
        with self.connect() as con:
            return con.sql(sql).pl()


class MlflowResource(dg.ConfigurableResource):
    """MLflow tracking and the model registry.

    Training steps track through dagster-mlflow's `mlflow_tracking` (one MLflow run per Dagster
    run, tagged `dagster_run_id`), wrapped once here as a typed resource that imports mlflow
    only in the steps that use it. The run is ended by `tracked_run` itself: `materialize()` and
    `dagster asset materialize` attach no job hooks, so the upstream hook would not.
    """

    tracking_uri: str = Field(
        description="MLflow tracking URI (SQLite file locally, a server in production)."
    )
    artifact_location: str = Field(description="Where new experiments keep artifacts (a folder or s3://...).")
    experiment_name: str = Field(default="fraud_detector", description="MLflow experiment of training runs.")
    registered_model_name: str = Field(
        default=SETTINGS["ML_ASSETS_MODEL_NAME"].default, description="Registered model name."
    )
    ui_url: str = Field(default="http://127.0.0.1:5000", description="MLflow UI, for links in metadata.")

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def experiment_id(self) -> str:
        client = self.client()
        found = client.get_experiment_by_name(self.experiment_name)
        if found:
            return found.experiment_id
        return client.create_experiment(self.experiment_name, artifact_location=self.artifact_location)

    def load_booster(self, version: str):
        """The LightGBM booster of a registered version (native, not pyfunc: no pandas round trip)."""
        from ml_assets.lib import tracking

        return tracking.load_booster(self.tracking_uri, self.registered_model_name, version)

    def load_model(self, version: str) -> tuple[object, list[str]]:
        """(the booster of a registered version, its own feature list): what its input is built from."""
        from ml_assets.lib import registry

        tags = self.client().get_model_version(self.registered_model_name, version).tags
        booster = self.load_booster(version)
        return booster, registry.model_columns(tags, booster)

    def run_url(self, run_id: str) -> str:
        return f"{self.ui_url}/#/experiments/{self.experiment_id()}/runs/{run_id}"

    @contextmanager
    def tracked_run(self, context: dg.AssetExecutionContext, tags: dict[str, str] | None = None):
        """An active MLflow run for this Dagster run; FINISHED on success, FAILED on error."""
        import mlflow
        from dagster_mlflow.resources import MlFlow

        try:
            self.experiment_id()  # create it with our artifact location before dagster-mlflow does
        except Exception as e:  # the store's own exceptions vary by backend
            raise dg.Failure(f"MLflow tracking store {self.tracking_uri} is unreachable: {e}") from e
        init = SimpleNamespace(
            log=context.log,
            dagster_run=context.run,
            run_id=context.run.run_id,
            resource_config={
                "experiment_name": self.experiment_name,
                "mlflow_tracking_uri": self.tracking_uri,
                "extra_tags": tags or {},
            },
        )
        tracker = MlFlow(init)
        try:
            yield tracker
        except BaseException:
            mlflow.end_run(status="FAILED")
            raise
        mlflow.end_run()


class QualityGatesResource(dg.ConfigurableResource):
    """Thresholds of the validation gates. A challenger failing any of them is never promoted."""

    max_roc_auc_drop: float = Field(
        default=Thresholds.max_roc_auc_drop,
        description="Fail when the challenger's ROC-AUC is below the champion's by more than this, "
        "even at the top of the 95% bootstrap interval of the difference.",
    )
    max_pr_auc_drop: float = Field(
        default=Thresholds.max_pr_auc_drop, description="The same tolerance for PR-AUC."
    )
    min_roc_auc: float = Field(default=Thresholds.min_roc_auc, description="Absolute ROC-AUC floor.")
    min_pr_auc: float = Field(default=Thresholds.min_pr_auc, description="Absolute PR-AUC floor.")
    max_slice_roc_auc_drop: float = Field(
        default=Thresholds.max_slice_roc_auc_drop,
        description="Largest ROC-AUC regression allowed in any slice (channel, country, MCC, amount band).",
    )
    max_ece: float = Field(default=Thresholds.max_ece, description="Largest expected calibration error.")
    alert_budget: float = Field(
        default=Thresholds.alert_budget,
        gt=0,
        le=1,
        description="Share of transactions the fraud team can review: each version's decision threshold "
        "(tag decision_threshold) sends this share of its holdout to review.",
    )
    max_recall_at_budget_drop: float = Field(
        default=Thresholds.max_recall_at_budget_drop,
        description="Fail when the challenger's recall at the alert budget is below the champion's by more "
        "than this, even at the top of the 95% bootstrap interval (each at its own threshold).",
    )


class MonitoringResource(dg.ConfigurableResource):
    """Windows and thresholds of monitoring, and of the sensors that act on it."""

    psi_threshold: float = Field(
        default=0.2, description="PSI above which a feature (or the score) counts as drifted."
    )
    window_days: int = Field(
        default=7,
        description="Days of scored traffic live performance looks at (longer than the label delay).",
    )
    live_roc_auc_floor: float = Field(
        default=0.85, description="Champion live ROC-AUC below this asks for retraining."
    )
    min_live_positives: int = Field(
        default=20, description="Labelled frauds needed before live performance is trusted."
    )
    retraining_cooldown_days: int = Field(
        default=3, description="At least this many days of data between two retraining requests."
    )
    max_live_pr_auc_relative_drop: float = Field(
        default=0.25,
        description="Champion live PR-AUC this much below its holdout PR-AUC (relative) asks for retraining.",
    )
    canary_min_positives: int = Field(
        default=30, description="Labelled frauds the candidate must have scored before it is judged."
    )
    canary_max_pr_auc_drop: float = Field(
        default=0.05, description="Candidate is rolled back if its live PR-AUC trails the champion's by more."
    )
    # The canary's step guards (ml_assets.lib.rollout): proxies judged on each step's own traffic.
    canary_step_min_scores: int = Field(
        default=200,
        description="Canary scores (and champion scores) a rollout step needs before it is judged.",
    )
    canary_max_score_psi: float = Field(
        default=0.25,
        description="A step fails when the PSI of the canary's live scores against its own offline "
        "scores (validation and holdout) exceeds this.",
    )
    canary_alert_threshold: float = Field(
        default=0.5,
        description="A score at or above this is an alert (the alert rate guard), for a canary "
        "without a decision_threshold tag; with one, its own threshold.",
    )
    canary_max_alert_rate_gap: float = Field(
        default=0.05,
        description="A step fails when the canary's live alert rate differs from its offline one by "
        "more (absolute).",
    )

    canary_max_error_rate: float = Field(
        default=0.01,
        description="A step fails when more of the canary's attempts than this share failed (its "
        "model raised, or gave a score that is not finite; the champion answered them).",
    )
    canary_max_p99_ratio: float = Field(
        default=1.5,
        description="A step fails when the canary's p99 latency exceeds this many times the "
        "champion's of the same traffic (and canary_p99_budget_ms).",
    )
    canary_p99_budget_ms: float = Field(
        default=250.0,
        description="A canary p99 latency within this always passes the p99 guard: below it, a "
        "difference from the champion's is noise, not the model.",
    )

    def rollout_guards(self, alert_threshold: float | None = None):
        """The step guards; `alert_threshold`: the canary's own decision threshold, when it has one."""
        from ml_assets.lib.rollout import Guards

        return Guards(
            self.canary_step_min_scores,
            self.canary_max_score_psi,
            self.canary_alert_threshold if alert_threshold is None else alert_threshold,
            self.canary_max_alert_rate_gap,
            self.canary_max_error_rate,
            self.canary_max_p99_ratio,
            self.canary_p99_budget_ms,
        )


class ServingResource(dg.ConfigurableResource):
    """How a validated model version reaches traffic. The promotion jobs write it to the registry
    as tags, and the serving service follows them."""

    strategy: str = Field(
        default="canary",
        description="single, blue_green, canary, shadow or ab. Under canary and shadow a validated "
        "version first serves beside the champion and is promoted only if it holds up live.",
    )
    canary_steps: str = Field(
        default=SETTINGS["ML_ASSETS_CANARY_STEPS"].default,
        description="A canary's rollout: the shares of transactions it scores, step by step "
        "(comma-separated, increasing, the last usually 1.0). Each step holds until its guards pass; "
        "the last then promotes it.",
    )
    ab_share: float = Field(default=0.5, description="Share of cards on arm B (the challenger) under ab.")

    def steps(self) -> tuple[float, ...]:
        from ml_assets.lib.rollout import parse_steps

        return parse_steps(self.canary_steps)

    def config(self):
        from ml_assets.lib.serving_config import ServingConfig, Strategy

        return ServingConfig(Strategy(self.strategy), self.steps()[0], self.ab_share)


class AlertsResource(dg.ConfigurableResource):
    """Where alerts go: always the Dagster log, and a webhook (JSON POST) when one is set."""

    webhook_url: str | None = Field(default=None, description="Webhook for alerts (ML_ASSETS_ALERT_WEBHOOK).")

    def send(self, log, title: str, text: str) -> None:
        import json
        import urllib.request

        log.error(f"{title}: {text}")
        if not self.webhook_url:
            return
        body = json.dumps({"title": title, "text": text}).encode()
        request = urllib.request.Request(self.webhook_url, body, {"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(request, timeout=5).close()
        except OSError as e:  # an alert that can't be delivered must not fail anything else
            log.warning(f"could not post the alert to the webhook: {e}")


def _dbt_resource(**config) -> dg.ConfigurableResource:
    """dagster-dbt's DbtCliResource, told this environment's dbt version instead of asking.

    dagster-dbt learns the version by running `dbt --version` once per run, and that command also
    asks PyPI for the latest release (a network call from every run, found by test_real_clients'
    audit). `dbt_executable` is this environment's dbt, so dbt-core's package metadata says the
    same version.
    """
    from functools import cached_property
    from importlib.metadata import version as installed

    from dagster_dbt import DbtCliResource
    from packaging.version import Version

    class DbtResource(DbtCliResource):
        @cached_property
        def _cli_version(self) -> Version:
            return Version(installed("dbt-core"))

    return DbtResource(**config)


def build_resources(keys: Collection[str] | None = None) -> dict[str, dg.ConfigurableResource]:
    """Every resource (or those named in `keys`), configured from the environment (read now, when
    the location loads). dbt's is built only when asked for: building it imports dagster-dbt
    (~1.5 CPU-s), which `make rollback` does not use."""
    from ml_assets.lib.dbt_project import DBT_PROJECT_DIR

    store = value("ML_ASSETS_ONLINE_STORE")
    built = {
        "lake": LakeResource.from_env(),
        "landing": LandingResource(root=str(paths.landing_dir())),
        "warehouse": WarehouseResource(path=paths.warehouse_uri()),
        "mlflow": MlflowResource(
            tracking_uri=paths.mlflow_tracking_uri(),
            artifact_location=paths.mlflow_artifact_root(),
            registered_model_name=value("ML_ASSETS_MODEL_NAME"),
        ),
        # A Redis URL may carry a password: given by the variable's name (resolved when a run
        # uses it), so the UI's resource config never shows it.
        "online_store": OnlineStoreResource(
            url=dg.EnvVar("ML_ASSETS_ONLINE_STORE") if store else paths.online_store_url()
        ),
        "quality_gates": QualityGatesResource(),
        "monitoring": MonitoringResource(),
        "serving": ServingResource(
            strategy=value("ML_ASSETS_SERVING_STRATEGY"), canary_steps=value("ML_ASSETS_CANARY_STEPS")
        ),
        # A secret: the resource holds the variable's name, resolved only when a run uses it, so the
        # UI's resource config never shows the URL.
        "alerts": AlertsResource(
            webhook_url=dg.EnvVar("ML_ASSETS_ALERT_WEBHOOK") if value("ML_ASSETS_ALERT_WEBHOOK") else None
        ),
    }
    if keys is None or "dbt" in keys:
        built["dbt"] = _dbt_resource(
            project_dir=str(DBT_PROJECT_DIR),
            profiles_dir=str(DBT_PROJECT_DIR),
            # The environment's own dbt, whether or not the venv is on PATH.
            dbt_executable=str(Path(sys.executable).parent / "dbt"),
            # An output of dbt_project/profiles.yml: `local` DuckDB, or `prod` (deploy/).
            target=paths.dbt_target(),
        )
    return {k: v for k, v in built.items() if keys is None or k in keys}


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources=build_resources())
