"""What the service deploys: the registry's aliases and strategy tags, resolved to loaded models.

The service never loads a model a request names: only versions the registered model's aliases
point at, and only those whose own features (the version's `feature_columns`) the online side
computes: a version that needs one it can't is not deployed, and says why (a champion that can't
be served leaves the current deployment serving). A `Deployment` is immutable; the poller builds
the next one beside the current one (loading any new version first) and the service swaps one
reference, so a request is scored entirely by one deployment and none waits for a load.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ml_assets.lib.registry import TAG_DECISION_THRESHOLD, decision_threshold
from ml_assets.lib.serving_config import CHAMPION, SPLIT_KEYS, ArmSpec, ServingConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Arm:
    spec: ArmSpec
    version: str
    booster: Any  # lightgbm.Booster
    share: float  # of the transactions it scores, after arms with a missing alias are dropped
    # The version's own decision threshold (its tag): score >= it is sent to review. None while the
    # version has none (its decisions are then null, and the deployment says so in `problems`).
    threshold: float | None = None
    columns: tuple[str, ...] = ()  # the version's own features, in order: its input

    @property
    def role(self) -> str:
        if not self.spec.returned:
            return "shadow"  # scores its share, never returned
        return "serving" if self.share > 0 else "standby"  # standby: loaded, for an instant switch

    def describe(self) -> dict:
        return {
            "arm": self.spec.name,
            "alias": self.spec.alias,
            "version": self.version,
            "traffic_share": round(self.share, 6),
            "role": self.role,
            "decision_threshold": self.threshold,
            "features": len(self.columns),
        }


@dataclass(frozen=True)
class Deployment:
    """One consistent view of the registry: a strategy and its arms, each with a loaded model."""

    model_name: str
    config: ServingConfig
    arms: tuple[Arm, ...]  # arms[0] is the champion's
    problems: tuple[str, ...] = ()
    resolved_at: float = field(default_factory=time.time)

    @property
    def key(self) -> tuple:
        """What makes two deployments the same: config and which version each arm serves."""
        return (self.config, tuple((a.spec, a.version, a.share, a.threshold) for a in self.arms))

    @property
    def serving_arms(self) -> list[Arm]:
        return [a for a in self.arms if a.role == "serving"]

    @property
    def shadow_arms(self) -> list[Arm]:
        return [a for a in self.arms if a.role == "shadow"]

    @property
    def split_key(self) -> str | None:
        """The transaction field whose hash picks the serving arm (None: one arm serves all)."""
        return SPLIT_KEYS.get(self.config.strategy) if len(self.serving_arms) > 1 else None

    def route(self, split_values: list[str]) -> np.ndarray:
        """Index into `serving_arms` for each transaction, by a stable hash of its split value."""
        arms = self.serving_arms
        if len(arms) == 1:
            return np.zeros(len(split_values), dtype=np.intp)
        bounds = np.cumsum([a.share for a in arms])[:-1]
        return np.searchsorted(bounds, [unit_hash(v) for v in split_values], side="right")

    def describe(self) -> dict:
        return {
            "model_name": self.model_name,
            "strategy": self.config.strategy.value,
            "config": self.config.to_tags(),
            "split_by": self.split_key,
            "arms": [a.describe() for a in self.arms],
            "problems": list(self.problems),
            "resolved_at": self.resolved_at,
        }


def unit_hash(value: str, salt: str = "ml_assets.serving") -> float:
    """A stable, uniform number in [0, 1) for `value`: the same card lands on the same arm in every
    process and after every restart (Python's hash() is salted per process)."""
    digest = hashlib.blake2b(value.encode(), digest_size=8, key=salt.encode()).digest()
    return int.from_bytes(digest, "big") / 2**64


class Unservable(Exception):
    """The champion needs a feature the online side can't compute: nothing changes."""


class Registry:
    """Reads the registered model's aliases and tags, and loads the versions they name (once each).
    `online_columns`: the features the service computes (ml_assets.serving.features)."""

    def __init__(self, tracking_uri: str, model_name: str, online_columns: list[str]):
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self.online = set(online_columns)
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self._loaded: dict[str, tuple[Any, list[str]]] = {}  # version -> (booster, its columns)
        self.loads = 0  # how many times a version was loaded (a switch to a warm one loads none)

    def load(self, version: str) -> tuple[Any, list[str]]:
        """(the version's booster, its own feature list), loaded once: how serving loads a version."""
        if version not in self._loaded:
            from ml_assets.lib import tracking
            from ml_assets.lib.registry import model_columns

            booster = tracking.load_booster(self.tracking_uri, self.model_name, version)
            tags = self.client.get_model_version(self.model_name, version).tags
            self._loaded[version] = (booster, model_columns(tags, booster))
            self.loads += 1
            log.info("loaded %s version %s", self.model_name, version)
        return self._loaded[version]

    def _threshold(self, version: str, problems: list[str]) -> float | None:
        """The version's decision threshold tag, read on every poll: the validation report may set
        it after the version was loaded (a champion from before thresholds). A missing or unreadable
        one is a problem to report, never a reason to stop serving the scores."""
        tags = self.client.get_model_version(self.model_name, version).tags or {}
        value = decision_threshold(tags)
        if value is None:
            text = tags.get(TAG_DECISION_THRESHOLD)
            problems.append(
                f"version {version} has no valid {TAG_DECISION_THRESHOLD!r} tag ({text!r}): its "
                "decisions are null until its validation report sets one"
            )
            return None
        return value

    def missing_online(self, columns: list[str]) -> list[str]:
        return [c for c in columns if c not in self.online]

    def resolve(self, current: Deployment | None = None) -> Deployment | None:
        """The deployment the registry asks for now (None if there is no champion). Versions
        already loaded are reused; others are loaded before this returns."""
        model = self.client.get_registered_model(self.model_name)
        aliases = {alias: str(v) for alias, v in (model.aliases or {}).items()}
        config, problems = ServingConfig.from_tags(dict(model.tags or {}))
        specs = config.arms()
        if CHAMPION not in aliases:
            return None
        present = []
        for s in specs:
            if s.alias not in aliases:
                problems.append(f"alias {s.alias!r} is not set: arm {s.name!r} is not deployed")
                continue
            version = aliases[s.alias]
            _, columns = self.load(version)
            if missing := self.missing_online(columns):
                why = f"v{version} needs features the online side does not compute: {', '.join(missing)}"
                if s.alias == CHAMPION:
                    raise Unservable(f"champion {why}; still serving the last deployment")
                problems.append(f"arm {s.name!r} is not deployed: {why}")
                continue
            present.append(s)
        # A missing arm's share goes to the champion.
        returned_share = sum(s.share for s in present[1:] if s.returned)
        arms, thresholds = [], {}
        for i, s in enumerate(present):
            share = 1 - returned_share if i == 0 else s.share
            version = aliases[s.alias]
            if version not in thresholds:
                thresholds[version] = self._threshold(version, problems)
            booster, columns = self.load(version)
            arms.append(
                Arm(s, version, booster, share, threshold=thresholds[version], columns=tuple(columns))
            )
        deployment = Deployment(self.model_name, config, tuple(arms), tuple(problems))
        if current is not None and deployment.key == current.key:
            return current
        # Free the models no arm uses any more.
        used = {a.version for a in arms}
        self._loaded = {v: b for v, b in self._loaded.items() if v in used}
        return deployment
