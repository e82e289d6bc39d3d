"""Rollback to any earlier champion, the promotion ledger that outlives the Dagster instance, and a
canary's gradual rollout. On a real Dagster instance, MLflow registry and Delta lake in a temp dir,
the scoring service on a loopback port, the canary sensor ticked by Dagster's own daemon code and
the runs it asks for executed as launched runs are.

The tests build on each other in file order: v1, v2, v3 promoted (blue-green); a rollback to v1
by name (not to previous_champion, v2); v4, never champion, refused; on a new DAGSTER_HOME a
rollback to v2, from the ledger; `make retrain`'s refusals. Then, under the canary strategy, v4
ramps 5% -> 25% -> 50% -> 100% as each step's guards pass on that step's traffic, and v3, which
flags every purchase from a few hundred up, passes step 1 on small purchases and is rolled back
at step 2, when larger ones reach it. Each step's guards hold the canary's live scores to those
it gave its validation and holdout rows offline, which are small purchases.

Last, v5, a steady model whose every leaf is NaN (a corrupted model), fails to score each
transaction it is routed: the champion answers for it, the failures are rows of the inference
log, and the canary's error guard rolls it back at step 1.

The models are small LightGBM boosters that read only the amount: "steady" (v1, v2, v4) alerts
from 5000 up, "jumpy" (v3) from about 200 up. Below 200 both score alike to their last bits (the
same pure leaves, grown from the same start), so a step that sees only small purchases passes
its guards and one that sees larger ones fails them: the guards, not the test, tell them apart.
"""

from __future__ import annotations

import itertools
import math
import re
import time

import dagster as dg
import httpx
import numpy as np
import polars as pl
import pytest

from ml_assets.lib import ledger, paths, registry, tables
from ml_assets.lib.features import feature_columns
from ml_assets.lib.serving_config import CANARY_STEP_TAG
from ml_assets_tests.conftest import load_defs, new_root, root_environ, run_job, scoped_environ, tx
from ml_assets_tests.daemon_support import SensorDaemon, execute_queued_run
from ml_assets_tests.serving_support import Server, drain

FEATURE_COLUMNS = feature_columns()

NAME = "fraud_detector"
STEADY, JUMPY = 5000.0, 200.0  # the amounts from which each model alerts
STEPS = (0.05, 0.25, 0.5, 1.0)  # the default rollout (ML_ASSETS_CANARY_STEPS)
CANARY_SCORES = 260  # per step: past the guards' 200, with room for the hash split's spread
SMALL, LARGE = (10.0, 90.0), (300.0, 3000.0)  # purchases both models score alike; ones jumpy alerts on


def _booster(alert_from: float):
    """LightGBM on the amount alone (every other feature constant, so never split on); no
    boost_from_average, so two such models start from the same score and grow identical leaves
    wherever their labels agree."""
    import lightgbm as lgb
    import pandas as pd

    x = pd.DataFrame(np.zeros((4000, len(FEATURE_COLUMNS))), columns=FEATURE_COLUMNS)
    x["amount"] = np.linspace(1, 10000, len(x))
    y = (x["amount"] >= alert_from).astype(int)
    params = {"objective": "binary", "verbose": -1, "num_threads": 1, "boost_from_average": False}
    return lgb.train(params, lgb.Dataset(x, y), num_boost_round=20)


def _corrupted(booster):
    """The same trees with every leaf NaN: a real model whose every score is not a number.
    (tree_sizes goes: it gives each tree's length in bytes, which the NaNs change.)"""
    import lightgbm as lgb

    def nan_leaves(line: re.Match) -> str:
        return "leaf_value=" + " ".join("nan" for _ in line.group(1).split())

    text = re.sub(r"^leaf_value=(.*)$", nan_leaves, booster.model_to_string(), flags=re.M)
    return lgb.Booster(model_str=re.sub(r"^tree_sizes=.*\n", "", text, flags=re.M))


def _snapshot() -> int:
    """A training snapshot whose validation and holdout rows are small purchases (what the
    versions were validated on, and what their rollout steps hold live scores to); its Delta
    version."""
    from ml_assets.defs.resources import LakeResource

    rng = np.random.default_rng(0)
    rows = {c: np.zeros(600) for c in FEATURE_COLUMNS} | {"amount": rng.uniform(*SMALL, 600)}
    frame = pl.DataFrame(rows).with_columns(split=pl.Series(["validation", "holdout"] * 300))
    return LakeResource.from_env().replace_table(tables.TRAINING_SET, frame)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A data root whose registry holds v1..v5 of fraud_detector (steady, steady, jumpy, steady,
    corrupted), each validated on one training snapshot; its Dagster instance; nothing deployed."""
    import mlflow

    from ml_assets.lib import tracking

    root = new_root(tmp_path_factory.mktemp("rollout") / "data")
    with scoped_environ(**root_environ(root)):
        tags = {registry.TAG_VERDICT: "passed", registry.TAG_TRAINING_SET_VERSION: str(_snapshot())}
        uri = paths.mlflow_tracking_uri()
        tracking.use_store(uri)
        client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        logged = {}
        steady = _booster(STEADY)
        for kind, booster in (
            ("steady", steady),
            ("jumpy", _booster(JUMPY)),
            ("corrupted", _corrupted(steady)),
        ):
            # This store's own Default experiment: MLflow's active one is process-wide, and an
            # earlier test's may belong to another store.
            default = client.get_experiment_by_name("Default").experiment_id
            with mlflow.start_run(experiment_id=default) as run:
                logged[kind] = (
                    tracking.log_model(booster, None, FEATURE_COLUMNS),
                    run.info.run_id,
                )
        for kind in ("steady", "steady", "jumpy", "steady", "corrupted"):
            model_uri, run_id = logged[kind]
            tracking.register(client, NAME, model_uri, run_id, tags)
        instance = dg.DagsterInstance.get()
        yield root, instance
        instance.dispose()


def _deploy(instance, job: str = "promotion_job", definitions=None, **config):
    """A `deployed_model` run of the location (as the environment configures it, unless given);
    its metadata."""
    config = {"reason": "test", "actor": "pytest"} | config
    run_config = {"ops": {"deployed_model": {"config": config}}}
    result = run_job(definitions or load_defs(), job, instance=instance, run_config=run_config)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    return {
        k: v.value for k, v in result.asset_materializations_for_node("deployed_model")[0].metadata.items()
    }


def _aliases() -> dict[str, str | None]:
    from mlflow import MlflowClient

    uri = paths.mlflow_tracking_uri()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return {a: registry.alias_version(client, NAME, a) for a in registry.ALIASES}


def _rollback_command(capsys, *args: str) -> tuple[int, list[str]]:
    """`make rollback` (python -m ml_assets.rollback), in this process: (exit status, what it
    printed). Its one-line refusal as a subprocess prints it is test_model_lifecycle's."""
    from ml_assets.rollback import main

    capsys.readouterr()
    status = main(["--reason", "test", *args])
    return status, capsys.readouterr().out.splitlines()


def _ledger():
    from ml_assets.defs.resources import LakeResource

    return ledger.history(LakeResource.from_env(), NAME)


def test_rollback_to_a_named_earlier_champion(world):
    root, instance = world
    with scoped_environ(**root_environ(root), ML_ASSETS_SERVING_STRATEGY="blue_green"):
        definitions = load_defs()
        for version in ("1", "2", "3"):
            _deploy(instance, definitions=definitions, version=version)
        assert _aliases()["champion"] == "3" and _aliases()["previous_champion"] == "2"
        # Not previous_champion (v2): the version named.
        meta = _deploy(instance, job="rollback_job", definitions=definitions, action="rollback", version="1")
        assert (meta["action"], meta["champion"], meta["replaced"]) == ("rollback", "1", "3")
        aliases = _aliases()
        assert aliases["champion"] == "1" and aliases["previous_champion"] is None
        # Every materialization is a ledger row with the same facts.
        rows = _ledger()
        assert rows.select("action", "champion", "replaced").rows() == [
            ("promote", "1", None), ("promote", "2", "1"), ("promote", "3", "2"), ("rollback", "1", "3"),
        ]  # fmt: skip
        last = rows.row(-1, named=True)
        from ml_assets.defs.resources import LakeResource

        assert meta["ledger_delta_version"] == LakeResource.from_env().version(tables.PROMOTION_LEDGER)
        assert meta["actor"] == last["actor"] == "pytest" and meta["reason"] == last["reason"] == "test"
        events = instance.fetch_materializations(dg.AssetKey("deployed_model"), limit=10).records
        assert {r.run_id for r in events} == set(rows["dagster_run_id"])


def test_a_version_that_was_never_champion_is_refused_in_one_line(world, capsys):
    root, _ = world
    with scoped_environ(**root_environ(root)):
        assert _rollback_command(capsys, "--version", "4") == (
            1,
            [
                "not rolled back: v4 was never champion of fraud_detector: the promotion history's "
                "earlier champions are v2, v3"
            ],
        )
        assert _aliases()["champion"] == "1" and len(_ledger()) == 4  # nothing moved, nothing recorded


def test_the_ledger_outlives_the_dagster_instance_and_rollback_still_works(world, tmp_path, capsys):
    """A new, empty DAGSTER_HOME: no runs, no materializations. v2 was champion before: the
    ledger in the lake says so, and `make rollback VERSION=2` puts it back."""
    root, _ = world
    home = tmp_path / "new_dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with scoped_environ(**(root_environ(root) | {"DAGSTER_HOME": str(home)})):
        with dg.DagsterInstance.get() as fresh:
            assert not fresh.get_runs()
        status, printed = _rollback_command(capsys, "--version", "2")
        assert (status, printed[-1:]) == (0, ["rolled back: champion is v2 again (v1 taken off)"])
        assert _aliases()["champion"] == "2"
        assert _ledger().select("action", "champion", "replaced").row(-1) == ("rollback", "2", "1")
        with dg.DagsterInstance.get() as fresh:  # the new instance recorded it too
            (record,) = fresh.fetch_materializations(dg.AssetKey("deployed_model"), limit=5).records
        assert record.run_id == _ledger()["dagster_run_id"][-1]


def test_make_retrain_refuses_in_one_line(world, capsys):
    """No version, a version that does not exist, one that pins nothing to retrain from (these
    record a snapshot but no parameters): one line each, exit status 1, no traceback."""
    from ml_assets.retrain import main

    root, _ = world
    with scoped_environ(**root_environ(root)):
        for args, said in (
            ([], "not retrained: name a version (make retrain VERSION=N)"),
            (["99"], "not retrained: fraud_detector has no version '99'"),
            (["1"], "not retrained: fraud_detector v1 does not record lightgbm_params, best_iteration: "
                    "nothing pinned to retrain from"),
        ):  # fmt: skip
            capsys.readouterr()
            assert main(args) == 1
            assert capsys.readouterr().out.splitlines() == [said]


_ids = itertools.count()


class Traffic:
    """The scoring service of the data root (a real HTTP server), and its inference log."""

    def __init__(self, root):
        from ml_assets.serving.app import create_app
        from ml_assets.serving.service import Service
        from ml_assets.serving.settings import ServingSettings

        self.root = root
        settings = ServingSettings(paths.mlflow_tracking_uri(), paths.online_store_url(), poll_seconds=0.2)
        self.server = Server(create_app(Service(settings)))

    def __enter__(self) -> Traffic:
        self.server.__enter__()
        self.http = httpx.Client(base_url=self.server.url, timeout=60)
        return self

    def __exit__(self, *exc) -> None:
        self.http.close()
        self.server.__exit__(*exc)

    def serving(self, canary: str | None, share: float) -> None:
        """Wait until the service serves `canary` at `share` (None: the champion alone)."""
        deadline = time.monotonic() + 30
        while True:
            arms = {
                a["arm"]: (a["version"], a["traffic_share"]) for a in self.http.get("/model").json()["arms"]
            }
            if (canary is None and set(arms) == {"champion"}) or arms.get("canary") == (canary, share):
                return
            assert time.monotonic() < deadline, arms
            time.sleep(0.1)

    def send(self, canary_scores: int, share: float, amounts: tuple[float, float]) -> list[dict]:
        """Enough purchases of amounts in `amounts` for the canary to score about `canary_scores`
        of them, each from a card of its own, then drained into the inference log; the answers.
        In requests of 100: each row's latency is its request's, and the p99 guard's budget is
        far above a 100-row request's on any box."""
        rng = np.random.default_rng(next(_ids))
        n, answered = math.ceil(canary_scores / share), []
        for start in range(0, n, 100):
            batch = []
            for _ in range(min(100, n - start)):
                i = next(_ids)
                amount = f"{rng.uniform(*amounts):.2f}"
                batch.append(tx(i, transaction_id=f"rollout-{i}", card_id=f"card-{i}", amount=amount))
            response = self.http.post("/predict", json={"transactions": batch})
            assert response.status_code == 200, response.text
            answered += response.json()["predictions"]
        drain(paths.lake_uri(), paths.online_store_url())
        return answered


def _decide(daemon: SensorDaemon, instance) -> tuple[str | None, dict]:
    """One canary_sensor tick by the daemon, and the run it asked for executed: (the action, the
    run's deployed_model metadata), or (None, {"skip": why})."""
    tick = daemon.tick("canary_sensor")
    if not tick.run_ids:
        return None, {"skip": tick.skip_reason}
    (run_id,) = tick.run_ids
    run = execute_queued_run(instance, run_id)
    assert run.status == dg.DagsterRunStatus.SUCCESS, run
    (record,) = [
        r
        for r in instance.get_records_for_run(
            run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
        ).records
        if r.asset_materialization.asset_key == dg.AssetKey("deployed_model")
    ]
    meta = {k: v.value for k, v in record.asset_materialization.metadata.items()}
    return run.run_config["ops"]["deployed_model"]["config"]["action"], meta


def test_a_canary_ramps_step_by_step_while_its_guards_pass(world):
    root, instance = world
    with scoped_environ(**root_environ(root), ML_ASSETS_SERVING_STRATEGY="canary"):
        meta = _deploy(instance, version="4")
        assert (meta["action"], meta["canary_share"], meta["canary_step"]) == ("start_canary", 0.05, 1)
        with Traffic(root) as traffic, SensorDaemon(instance) as daemon:
            traffic.serving("4", STEPS[0])
            action, held = _decide(daemon, instance)  # no traffic at this step yet: it holds
            assert action is None and "holding: 0 canary scores at this step" in held["skip"], held
            for step, share in enumerate(STEPS, 1):
                traffic.serving("4", share)
                traffic.send(CANARY_SCORES, share, SMALL)
                action, meta = _decide(daemon, instance)
                if step == len(STEPS):
                    break
                assert action == "ramp_candidate", meta
                assert (meta["action"], meta["canary_step"], meta["canary_share"]) == (
                    "ramp_canary",
                    step + 1,
                    STEPS[step],
                )
                evidence = meta["evidence"]
                assert evidence["step"] == step and evidence["source"] == "inference_log"
                assert evidence["guards"] == dict.fromkeys(
                    ("score_distribution", "alert_rate", "errors", "p99_latency"), "passed"
                )
                assert evidence["canary_scores"] >= 200 and evidence["score_psi"] == 0.0
                # The service's own figures: no failures; each arm's latencies of this step.
                assert (evidence["canary_failures"], evidence["canary_error_rate"]) == (0, 0.0)
                assert evidence["canary_attempts"] == evidence["canary_scores"]
                assert evidence["champion_p99_from"] == "step"
                assert evidence["canary_p99_ms"] > 0 and evidence["champion_p99_ms"] > 0
            # The last step's proxies pass too; promotion waits for labelled outcomes. The champion
            # serves nothing at 100%: its latencies are the rollout's earlier steps'.
            assert "vs the champion's" in meta["skip"] and "(rollout;" in meta["skip"], meta
            assert (
                action is None
                and "guards passed" in meta["skip"]
                and "waiting for labelled outcomes" in meta["skip"]
            )
            assert daemon.cursor("canary_sensor") is None  # the steps live in the registry
        rows = _ledger().filter(pl.col("candidate") == "4")
        assert rows.select("action", "canary_step", "canary_share").rows() == [
            ("start_canary", 1, 0.05), ("ramp_canary", 2, 0.25), ("ramp_canary", 3, 0.5),
            ("ramp_canary", 4, 1.0),
        ]  # fmt: skip
        # Ended by hand, for the next test: taken off, the champion serves everything again.
        assert _deploy(instance, action="abort_candidate")["action"] == "abort_canary"


def test_a_failing_guard_at_step_2_rolls_the_canary_back(world):
    root, instance = world
    with scoped_environ(**root_environ(root), ML_ASSETS_SERVING_STRATEGY="canary"):
        assert _deploy(instance, version="3")["canary_step"] == 1
        with Traffic(root) as traffic, SensorDaemon(instance) as daemon:
            traffic.serving("3", STEPS[0])
            traffic.send(CANARY_SCORES, STEPS[0], SMALL)
            action, meta = _decide(daemon, instance)
            assert (action, meta["canary_step"]) == ("ramp_candidate", 2), meta
            traffic.serving("3", STEPS[1])
            traffic.send(CANARY_SCORES, STEPS[1], LARGE)
            action, meta = _decide(daemon, instance)
            assert action == "abort_candidate", meta
            evidence = meta["evidence"]
            assert evidence["step"] == 2 and evidence["guards"]["alert_rate"] == "failed"
            assert evidence["canary_alert_rate"] == 1.0 and evidence["offline_alert_rate"] == 0.0
            assert evidence["vs_champion"]["champion_alert_rate"] == 0.0  # the champion arm, same time
            assert (meta["action"], meta["champion"], meta["replaced"]) == ("abort_canary", "2", "3")
            traffic.serving(None, 1.0)  # the champion serves everything again
        assert _aliases()["canary"] is None and _aliases()["champion"] == "2"
        from mlflow import MlflowClient

        uri = paths.mlflow_tracking_uri()
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        assert CANARY_STEP_TAG not in client.get_registered_model(NAME).tags  # the rollout is over
        assert (
            "alert rate 100.00% vs 0.00% offline"
            in client.get_model_version(NAME, "3").tags["rolled_back_because"]
        )
        last = _ledger().row(-1, named=True)
        assert (last["action"], last["candidate"], last["canary_step"]) == ("abort_canary", "3", None)
        assert '"alert_rate": "failed"' in last["evidence"]
        assert pl.read_delta(f"{paths.lake_uri()}/{tables.INFERENCE_LOG}").height > 0


def test_a_canary_that_fails_to_score_is_answered_by_the_champion_and_rolled_back(world):
    """v5's every score is NaN. Each transaction routed to it is answered by the champion (v2),
    its failure is a row of the inference log, and the error guard aborts the rollout at step 1:
    no caller ever got a canary answer, and no answer was an error."""
    root, instance = world
    with scoped_environ(**root_environ(root), ML_ASSETS_SERVING_STRATEGY="canary"):
        assert _deploy(instance, version="5")["canary_step"] == 1
        with Traffic(root) as traffic, SensorDaemon(instance) as daemon:
            traffic.serving("5", STEPS[0])
            answered = traffic.send(CANARY_SCORES, STEPS[0], SMALL)
            assert {(p["arm"], p["model_version"]) for p in answered} == {("champion", "2")}
            assert all(math.isfinite(p["score"]) and p["decision"] is None for p in answered)
            log = pl.read_delta(f"{paths.lake_uri()}/{tables.INFERENCE_LOG}").filter(
                pl.col("model_version") == "5"
            )
            assert log.height >= CANARY_SCORES * 0.7  # the hash split's spread around 5%
            assert log["arm"].unique().to_list() == ["canary"] and not log["returned"].any()
            assert log["score"].null_count() == log.height
            assert log["error"].unique().to_list() == ["a score that is not a finite number"]
            # Each failed transaction's returned row is the champion's, with both arms' time in it.
            returned = pl.read_delta(f"{paths.lake_uri()}/{tables.INFERENCE_LOG}").join(
                log.select("transaction_id", pl.col("latency_ms").alias("canary_ms")), on="transaction_id"
            )
            returned = returned.filter(pl.col("returned"))
            assert returned.height == log.height and (returned["arm"] == "champion").all()
            assert (returned["latency_ms"] >= returned["canary_ms"]).all()
            action, meta = _decide(daemon, instance)
            assert action == "abort_candidate", meta
            evidence = meta["evidence"]
            assert evidence["guards"]["errors"] == "failed" and evidence["canary_error_rate"] == 1.0
            assert evidence["canary_failures"] == log.height and evidence["canary_scores"] == 0
            traffic.serving(None, 1.0)
        assert _aliases()["canary"] is None and _aliases()["champion"] == "2"


def test_a_rollback_takes_a_running_canary_off_too(world):
    """v4 rolls out as a canary beside v2; a rollback to v1 serves v1 alone: the canary alias and
    its rollout go, v4 says why, and the ledger's row names it."""
    root, instance = world
    with scoped_environ(**root_environ(root), ML_ASSETS_SERVING_STRATEGY="canary"):
        definitions = load_defs()
        assert _deploy(instance, definitions=definitions, version="4")["canary_step"] == 1
        meta = _deploy(instance, job="rollback_job", definitions=definitions, action="rollback", version="1")
        assert (meta["champion"], meta["replaced"], meta["candidate"], meta["canary_share"]) == (
            "1",
            "2",
            "4",
            0.0,
        )
        aliases = _aliases()
        assert (aliases["champion"], aliases["canary"], aliases["previous_champion"]) == ("1", None, None)
        from mlflow import MlflowClient

        uri = paths.mlflow_tracking_uri()
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        assert CANARY_STEP_TAG not in client.get_registered_model(NAME).tags
        assert (
            client.get_model_version(NAME, "4")
            .tags["rolled_back_because"]
            .startswith("taken off with the rollback of the champion to v1")
        )
        last = _ledger().row(-1, named=True)
        assert (last["action"], last["champion"], last["candidate"], last["candidate_alias"]) == (
            "rollback", "1", "4", "canary",
        )  # fmt: skip


def _traffic(
    source="inference_log", scores=260, failures=0, canary_ms=None, champion_ms=None, reference="step"
):
    """A step's traffic as step_traffic gives it: steady scores, and the latencies given."""
    from ml_assets.lib import rollout

    live = source == "inference_log"
    return rollout.StepTraffic(
        source,
        np.full(scores, 0.01),
        np.full(1000, 0.01),
        canary_failures=failures if live else None,
        canary_latency_ms=np.asarray(canary_ms if canary_ms is not None else np.full(scores, 5.0))
        if live
        else None,
        champion_latency_ms=np.asarray(champion_ms if champion_ms is not None else np.full(1000, 5.0))
        if live
        else None,
        champion_latency_from=reference if live else None,
    )


def test_the_error_and_p99_guards_on_their_edges():
    """rollout.judge's errors and p99 guards on constructed traffic (the same scores throughout,
    so the proxies pass and only these two decide)."""
    from ml_assets.defs.resources import MonitoringResource
    from ml_assets.lib import rollout

    guards = MonitoringResource().rollout_guards()  # 200 scores, 1% errors, 1.5x p99, 250 ms
    offline = np.full(600, 0.01)

    def judged(**traffic) -> dict:
        return rollout.judge(_traffic(**traffic), offline, guards)["guards"]

    assert judged() == dict.fromkeys(("score_distribution", "alert_rate", "errors", "p99_latency"), "passed")
    # Errors: 1% of the attempts passes, one more fails; with too few attempts it waits, unless
    # the failures already exceed what the bound allows of the attempts a judgement needs.
    assert judged(scores=198, failures=2)["errors"] == "passed"
    assert judged(scores=197, failures=3)["errors"] == "failed"
    assert judged(scores=50, failures=2)["errors"] == "waiting"
    assert judged(scores=0, failures=3)["errors"] == "failed"
    # p99: ten times the champion's is fine within the 250 ms budget; above it, 1.5x the champion's.
    assert judged(canary_ms=np.full(260, 50.0))["p99_latency"] == "passed"
    slow = np.full(1000, 200.0)
    assert judged(canary_ms=np.full(260, 300.0), champion_ms=slow)["p99_latency"] == "passed"
    assert judged(canary_ms=np.full(260, 301.0), champion_ms=slow)["p99_latency"] == "failed"
    # The 99th percentile, not the mean: 2% of slow requests fail it, 1 of 260 doesn't.
    tail = np.r_[np.full(254, 5.0), np.full(6, 900.0)]
    assert judged(canary_ms=tail)["p99_latency"] == "failed"
    assert judged(canary_ms=np.r_[np.full(259, 5.0), 900.0])["p99_latency"] == "passed"
    # Too few latencies on either side: it waits.
    assert judged(champion_ms=np.full(100, 5.0))["p99_latency"] == "waiting"
    assert judged(canary_ms=np.full(100, 5.0))["p99_latency"] == "waiting"
    # No live traffic (batch scoring only): neither guard applies, and neither holds the step.
    evidence = rollout.judge(_traffic(source="batch_predictions"), offline, guards)
    assert {k: evidence["guards"][k] for k in rollout.LIVE} == dict.fromkeys(rollout.LIVE, "not_applicable")
    assert rollout.status(evidence) == "passed"


def test_a_model_that_raises_fails_its_arm_not_the_request():
    """service.score on a real booster given rows of the wrong width: LightGBM raises, and the
    arm's every row is a failure named by the exception's type, not a 500."""
    from ml_assets.lib.serving_config import ArmSpec
    from ml_assets.serving.registry import Arm
    from ml_assets.serving.service import score

    arm = Arm(ArmSpec("canary", "canary", 0.05, True), "9", _booster(STEADY), 0.05)
    scores, seconds, error = score(arm, np.zeros((3, 2)), num_threads=1)
    assert np.isnan(scores).all() and scores.size == 3 and seconds >= 0
    assert error == "the model raised LightGBMError"
