"""The closed loop, day by day, in process: drift is detected, retraining is triggered, the new
model passes the gates, serves as a canary, is promoted, and live performance recovers. Then a
bad canary (trained on a stale, pre-drift snapshot) is rolled back automatically.

The simulator writes the whole world first; each simulated day then "delivers" that day's landing
folders and runs what production runs that day: ingestion, features, monitoring, and one tick of
each sensor, executing whatever they request.
"""

from __future__ import annotations

import shutil
from datetime import date, timedelta

import dagster as dg
import polars as pl
import pytest

from ml_assets.defs.monitoring.sensors import canary_sensor, retraining_sensor
from ml_assets.defs.promotion.sensors import model_promotion_sensor
from ml_assets.defs.resources import MonitoringResource, build_resources
from ml_assets.lib import registry, tables
from ml_assets_tests.conftest import DAGSTER_YAML, load_defs, run_job, scoped_environ

START = date(2026, 1, 1)
# Delivered at once: the history the first model trains on. Long enough for every lookback (30
# days of card history and of merchant labels) to fill, so the only drift left is the real one.
WARMUP_DAYS = 34
DRIFT_DAY = 34  # day index from which the simulator's atm_cashout pattern appears
LAST_DAY = 45  # the first scenario's last day; the world goes on for the second
EXTRA_DAYS = 6
# Days of data between retraining requests: shorter than production's default, so that the
# retraining after a blocked one comes soon enough for a short test.
COOLDOWN_DAYS = 2
pytestmark = pytest.mark.timeout(2400)  # two scenarios of ~15 simulated days each
# Small, fast models; windows short enough that drifted days reach the train split soon. A
# holdout of two small days measures calibration loosely (ECE noise alone is ~0.01 there), and
# right after the drift the fraud rate of the holdout runs ahead of the train window's: the
# production default (0.02) would hold every retrained model back until the drift is in train.
TRAINING = {
    "ops": {
        "training_set": {"config": {"holdout_days": 2, "validation_days": 1}},
        "fraud_model": {"config": {"n_trials": 1, "num_boost_round": 150}},
    },
    "resources": {"quality_gates": {"config": {"max_ece": 0.08}}},
}


def _day(i: int) -> str:
    return (START + timedelta(days=i)).isoformat()


class Loop:
    """Production's daily routine on one data root, with one tick of every sensor."""

    def __init__(self, root, source):
        self.root, self.source = root, source
        self.definitions = load_defs()
        self.instance = dg.DagsterInstance.get()
        self.resources = build_resources()
        self.resources["monitoring"] = MonitoringResource(retraining_cooldown_days=COOLDOWN_DAYS)
        self.cursors: dict[str, str | None] = {}
        self.log: list[str] = []

    def deliver(self, first: int, last: int) -> None:
        for feed in ("transactions", "labels"):
            for i in range(first, last + 1):
                folder = self.source / feed / f"date={_day(i)}"
                if folder.exists():
                    shutil.copytree(folder, self.root / "landing" / feed / f"date={_day(i)}")

    def run(self, job: str, days: tuple[str, str] | None = None, config: dict | None = None):
        result = run_job(self.definitions, job, instance=self.instance, days=days, run_config=config)
        self.log.append(f"{job} {days or ''}: {'ok' if result.success else 'FAILED'}")
        return result

    def tick(self, sensor) -> list[dg.RunRequest]:
        needed = {
            k: self.resources[k]
            for k in ("lake", "mlflow", "monitoring")
            if k in sensor.required_resource_keys
        }
        context = dg.build_sensor_context(
            instance=self.instance, cursor=self.cursors.get(sensor.name), resources=needed
        )
        result = sensor(context)
        self.cursors[sensor.name] = result.cursor
        return result.run_requests or []

    def aliases(self) -> dict[str, str | None]:
        mlflow = self.resources["mlflow"]
        return {
            a: registry.alias_version(mlflow.client(), mlflow.registered_model_name, a)
            for a in registry.ALIASES
        }

    def day(self, i: int) -> list[str]:
        """Day i: its files arrive, then ingestion, features, monitoring and the sensors."""
        self.deliver(i, i)
        result = self.run("daily_job", days=(_day(i), _day(i)))
        assert result.success, (i, [e.message for e in result.all_events if e.is_failure])
        return self.sensors()

    def sensors(self) -> list[str]:
        """One tick of each loop sensor, running what it asks; returns what happened."""
        events = []
        for request in self.tick(retraining_sensor):
            events.append(f"retrain ({request.tags['retrain_reason']})")
            self.run("retraining_job", config=TRAINING)
        for request in self.tick(model_promotion_sensor):
            assert self.run("promotion_job", config=request.run_config).success
            events.append(f"deploy v{request.tags['model_version']}")
        for request in self.tick(canary_sensor):
            action = request.run_config["ops"]["deployed_model"]["config"]["action"]
            assert self.run("promotion_job", config=request.run_config).success
            events.append(f"{action} v{request.tags['model_version']}")
        return events

    def live(self, day: str) -> pl.DataFrame:
        lake = self.resources["lake"]
        return (
            lake.scan(tables.LIVE_PERFORMANCE)
            .filter(pl.col("as_of_date") == date.fromisoformat(day))
            .collect()
        )


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    from ml_assets.simulate.generator import SimulatorConfig, simulate

    base = tmp_path_factory.mktemp("loop")
    root, source = base / "data", base / "world"
    with scoped_environ(
        ML_ASSETS_DATA_DIR=str(root),
        DAGSTER_HOME=str(root / "dagster_home"),
        ML_ASSETS_SERVING_STRATEGY="canary",
    ):
        (root / "dagster_home").mkdir(parents=True)
        (root / "dagster_home" / "dagster.yaml").write_text(DAGSTER_YAML)
        cfg = SimulatorConfig(
            days=LAST_DAY + 1 + EXTRA_DAYS,
            transactions_per_day=1200,
            base_fraud_rate=0.03,
            drift_day=DRIFT_DAY,
            bad_row_rate=0,
        )
        simulate(cfg, source, root / "simulator" / "truth", log=lambda _: None)
        loop = Loop(root, source)
        yield loop
        loop.instance.dispose()


def test_drift_is_caught_retrained_canaried_promoted_and_performance_recovers(loop):
    warmup = (_day(0), _day(WARMUP_DAYS - 1))
    loop.deliver(0, WARMUP_DAYS - 1)
    for job in ("ingestion_job", "features_job"):
        assert loop.run(job, days=warmup).success
    assert loop.run("retraining_job", config=TRAINING).success
    first = loop.sensors()
    assert first == ["deploy v1"], first  # the first model has no champion to sit beside
    assert loop.run("monitoring_job", days=warmup).success

    timeline = {i: loop.day(i) for i in range(WARMUP_DAYS, LAST_DAY + 1)}
    print("\n".join(f"day {i}: {events}" for i, events in timeline.items()))

    retrains = [i for i, e in timeline.items() if any(x.startswith("retrain") for x in e)]
    assert retrains and retrains[0] <= DRIFT_DAY + 6, timeline  # caught within days of the onset
    assert not [i for i in retrains if i < DRIFT_DAY], timeline  # and not before it
    promoted = [i for i, e in timeline.items() if any(x.startswith("promote_candidate") for x in e)]
    assert promoted, timeline
    starts = [i for i, e in timeline.items() if any(x.startswith("deploy") for x in e)]
    assert starts and starts[0] < promoted[0]  # served as a canary before promotion

    # The model that learned the drift beats the one it replaced on the same live traffic.
    aliases = loop.aliases()
    assert aliases[registry.CHAMPION] != "1" and aliases[registry.CANARY] is None
    live = loop.live(_day(promoted[-1]))
    canary = live.filter(pl.col("arm") == f"batch:{registry.CANARY}").row(0, named=True)
    old = live.filter(pl.col("arm") == f"batch:{registry.CHAMPION}").row(0, named=True)
    assert canary["pr_auc"] > old["pr_auc"], live
    loop_state["promoted_champion"] = aliases[registry.CHAMPION]


loop_state: dict = {}


def test_a_bad_canary_is_rolled_back_automatically(loop):
    champion = loop_state.get("promoted_champion")
    if champion is None:
        pytest.skip("needs the first scenario's promoted champion")
    # A stale challenger: trained on labels from before the drift. Offline it looks fine (its
    # holdout predates the drift); live it misses the new pattern.
    cutoff = {"holdout_days": 2, "validation_days": 1, "label_cutoff": _day(DRIFT_DAY)}
    stale = {**TRAINING, "ops": {**TRAINING["ops"], "training_set": {"config": cutoff}}}
    assert loop.run("retraining_job", config=stale).success
    stale_version = loop.aliases()[registry.CHALLENGER]
    (request,) = loop.tick(model_promotion_sensor)  # gates passed: it goes out as a canary
    assert loop.run("promotion_job", config=request.run_config).success
    assert loop.aliases()[registry.CANARY] == stale_version
    events: list[str] = []
    for i in range(LAST_DAY + 1, LAST_DAY + 1 + EXTRA_DAYS):  # labels for the canary's scores mature
        events += loop.day(i)
        if any(e.startswith("abort_candidate") for e in events):
            break
    assert any(e.startswith("abort_candidate") for e in events), events
    aliases = loop.aliases()
    assert aliases[registry.CHAMPION] == champion and aliases[registry.CANARY] is None
