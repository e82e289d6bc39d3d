"""Moving registry aliases: promotion and rollback, as the registry contract says. No Dagster.

The serving service polls the aliases, so moving `champion` is the deployment (blue-green: the
switch is instant, and `previous_champion` stays loaded for an instant rollback).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from ml_assets.lib import rollout
from ml_assets.lib.registry import CANARY, CHAMPION, PREVIOUS_CHAMPION, SHADOW, alias_version
from ml_assets.lib.serving_config import ROLLOUT_TAGS


class Refusal(Exception):
    """An expected refusal (nothing to roll back, a version that was never champion): said as one
    line, never retried."""


class NothingToRollBack(Refusal):
    pass


@dataclass(frozen=True)
class Move:
    action: str  # "promote", "rollback", "start_canary", "ramp_canary", ... or "none"
    champion: str | None  # the version serving after the move
    replaced: str | None  # the version it replaced
    previous_champion: str | None  # the rollback target after the move
    candidate: str | None = None  # a candidate's moves: its version
    candidate_alias: str | None = None
    canary_share: float | None = None  # its traffic share after the move
    canary_step: int | None = None  # the rollout step it is at after the move


def promote(client, name: str, version: str) -> Move:
    """Make `version` the champion; the old champion becomes previous_champion."""
    old = alias_version(client, name, CHAMPION)
    if old == str(version):
        return Move("none", old, None, alias_version(client, name, PREVIOUS_CHAMPION))
    if old is not None:
        client.set_registered_model_alias(name, PREVIOUS_CHAMPION, old)
    client.set_registered_model_alias(name, CHAMPION, str(version))
    return Move("promote", str(version), old, old)


def rollback_target(
    client, name: str, version: str | None = None, champions: list[str] = ()
) -> tuple[str, str | None]:
    """(the version a rollback would serve, the champion it would replace); a Refusal when there
    is none. Without `version`, previous_champion; with it, `version` if it is an earlier
    champion: named in `champions` (the promotion ledger's, ml_assets.lib.ledger) or the
    previous_champion alias. The one rule for both the rollback job and the command that asks first."""
    previous = alias_version(client, name, PREVIOUS_CHAMPION)
    current = alias_version(client, name, CHAMPION)
    if version is None:
        if previous is None:
            raise NothingToRollBack(
                f"nothing to roll back to: {name} has no '{PREVIOUS_CHAMPION}' alias "
                f"(champion is {current or 'unset'})"
            )
        return previous, current
    version = str(version)
    if version == current:
        raise Refusal(f"v{version} is already the champion of {name}")
    earlier = [v for v in champions if v != current]
    if version not in earlier and version != previous:
        named = ", ".join(f"v{v}" for v in earlier) or "none"
        raise Refusal(
            f"v{version} was never champion of {name}: the promotion history's earlier champions are {named}"
        )
    return version, current


def rollback(client, name: str, reason: str, version: str | None = None, champions: list[str] = ()) -> Move:
    """Put previous_champion (or `version`, an earlier champion) back as champion. The rolled-back
    version is tagged with why. previous_champion is removed either way: a second rollback must
    not serve the version just taken off.

    A canary or shadow candidate goes too, its rollout ended: a rollback puts back a version known
    to be good, to serve alone, and the candidate was judged beside the champion just taken off."""
    previous, current = rollback_target(client, name, version, champions)
    client.set_registered_model_alias(name, CHAMPION, previous)
    if alias_version(client, name, PREVIOUS_CHAMPION) is not None:
        client.delete_registered_model_alias(name, PREVIOUS_CHAMPION)
    if current is not None:
        client.set_model_version_tag(name, current, "rolled_back_because", reason[:4900])
    for alias in (CANARY, SHADOW):
        if (candidate := alias_version(client, name, alias)) is not None:
            why = f"taken off with the rollback of the champion to v{previous}: {reason}"
            client.delete_registered_model_alias(name, alias)
            _end_rollout(client, name)
            client.set_model_version_tag(name, candidate, "rolled_back_because", why[:4900])
            return Move("rollback", previous, current, None, candidate, alias, 0.0)
    return Move("rollback", previous, current, None)


def _set_tags(client, name: str, tags: dict[str, str]) -> None:
    for tag, value in tags.items():
        client.set_registered_model_tag(name, tag, value)


def _end_rollout(client, name: str) -> None:
    """Forget a finished rollout's step (its share stays: no canary alias, no canary arm)."""
    present = client.get_registered_model(name).tags or {}
    for tag in ROLLOUT_TAGS:
        if tag in present:
            client.delete_registered_model_tag(name, tag)


def start_candidate(
    client, name: str, version: str, alias: str, steps: tuple[float, ...] = (), as_of: date | None = None
) -> Move:
    """Deploy `version` beside the champion under a strategy alias (canary or shadow). A canary
    starts at the first of `steps` (its share first, so the service never serves the new version
    at an older rollout's share); `as_of` is the newest batch-scored day, where batch evidence of
    the step starts."""
    share = step = None
    if alias == CANARY:
        _end_rollout(client, name)
        _set_tags(client, name, rollout.step_tags(steps, 1, as_of))
        share, step = steps[0], 1
    client.set_registered_model_alias(name, alias, str(version))
    champion = alias_version(client, name, CHAMPION)
    return Move(
        f"start_{alias}", champion, None, alias_version(client, name, PREVIOUS_CHAMPION),
        str(version), alias, share, step,
    )  # fmt: skip


def ramp_candidate(client, name: str, step: int, as_of: date | None) -> Move:
    """Move the canary's rollout to `step` (1-based): its share, and where the step's evidence
    starts. Asked again for a step it is already at or past, it changes nothing ("none")."""
    candidate = alias_version(client, name, CANARY)
    state = rollout.state_from_tags(client.get_registered_model(name).tags or {})
    if candidate is None or state is None:
        raise NothingToRollBack(f"no '{CANARY}' rollout to ramp")
    if not 1 <= step <= len(state.steps):
        raise Refusal(f"the rollout has steps 1..{len(state.steps)}, not {step}")
    champion, previous = alias_version(client, name, CHAMPION), alias_version(client, name, PREVIOUS_CHAMPION)
    if step <= state.step:
        return Move("none", champion, None, previous, candidate, CANARY, state.share, state.step)
    _set_tags(client, name, rollout.step_tags(state.steps, step, as_of, state.started_at))
    return Move("ramp_canary", champion, None, previous, candidate, CANARY, state.steps[step - 1], step)


def promote_candidate(client, name: str, alias: str) -> Move:
    """The candidate held up on live traffic: it becomes the champion."""
    candidate = alias_version(client, name, alias)
    if candidate is None:
        raise NothingToRollBack(f"no '{alias}' candidate to promote")
    move = promote(client, name, candidate)
    client.delete_registered_model_alias(name, alias)
    _end_rollout(client, name)
    return Move(f"promote_{alias}", move.champion, move.replaced, move.previous_champion, candidate, alias)


def abort_candidate(client, name: str, alias: str, reason: str) -> Move:
    """The candidate did not hold up: take it off traffic, and say why on the version."""
    candidate = alias_version(client, name, alias)
    if candidate is None:
        raise NothingToRollBack(f"no '{alias}' candidate to roll back")
    client.delete_registered_model_alias(name, alias)
    _end_rollout(client, name)
    client.set_model_version_tag(name, candidate, "rolled_back_because", reason[:4900])
    champion = alias_version(client, name, CHAMPION)
    return Move(
        f"abort_{alias}",
        champion,
        candidate,
        alias_version(client, name, PREVIOUS_CHAMPION),
        candidate,
        alias,
        0.0,
    )
