"""Moving registry aliases: promotion and rollback, as the registry contract says. No Dagster.

The serving service polls the aliases, so moving `champion` is the deployment (blue-green: the
switch is instant, and `previous_champion` stays loaded for an instant rollback).
"""

from __future__ import annotations

from dataclasses import dataclass

from ml_assets.lib.registry import CHAMPION, PREVIOUS_CHAMPION, alias_version


class NothingToRollBack(Exception):
    pass


@dataclass(frozen=True)
class Move:
    action: str  # "promote", "rollback" or "none"
    champion: str | None  # the version serving after the move
    replaced: str | None  # the version it replaced
    previous_champion: str | None  # the rollback target after the move


def promote(client, name: str, version: str) -> Move:
    """Make `version` the champion; the old champion becomes previous_champion."""
    old = alias_version(client, name, CHAMPION)
    if old == str(version):
        return Move("none", old, None, alias_version(client, name, PREVIOUS_CHAMPION))
    if old is not None:
        client.set_registered_model_alias(name, PREVIOUS_CHAMPION, old)
    client.set_registered_model_alias(name, CHAMPION, str(version))
    return Move("promote", str(version), old, old)


def rollback_target(client, name: str) -> tuple[str, str | None]:
    """(the version a rollback would serve, the champion it would replace); NothingToRollBack
    when there is none. The one rule for both the rollback job and the command that asks first."""
    previous = alias_version(client, name, PREVIOUS_CHAMPION)
    current = alias_version(client, name, CHAMPION)
    if previous is None:
        raise NothingToRollBack(
            f"nothing to roll back to: {name} has no '{PREVIOUS_CHAMPION}' alias "
            f"(champion is {current or 'unset'})"
        )
    return previous, current


def rollback(client, name: str, reason: str) -> Move:
    """Put previous_champion back as champion. The rolled-back version is tagged with why."""
    previous, current = rollback_target(client, name)
    client.set_registered_model_alias(name, CHAMPION, previous)
    client.delete_registered_model_alias(name, PREVIOUS_CHAMPION)
    if current is not None:
        client.set_model_version_tag(name, current, "rolled_back_because", reason[:4900])
    return Move("rollback", previous, current, None)


def start_candidate(client, name: str, version: str, alias: str) -> Move:
    """Deploy `version` beside the champion under a strategy alias (canary or shadow)."""
    client.set_registered_model_alias(name, alias, str(version))
    champion = alias_version(client, name, CHAMPION)
    return Move(f"start_{alias}", champion, None, alias_version(client, name, PREVIOUS_CHAMPION))


def promote_candidate(client, name: str, alias: str) -> Move:
    """The candidate held up on live traffic: it becomes the champion."""
    candidate = alias_version(client, name, alias)
    if candidate is None:
        raise NothingToRollBack(f"no '{alias}' candidate to promote")
    move = promote(client, name, candidate)
    client.delete_registered_model_alias(name, alias)
    return move


def abort_candidate(client, name: str, alias: str, reason: str) -> Move:
    """The candidate did not hold up: take it off traffic, and say why on the version."""
    candidate = alias_version(client, name, alias)
    if candidate is None:
        raise NothingToRollBack(f"no '{alias}' candidate to roll back")
    client.delete_registered_model_alias(name, alias)
    client.set_model_version_tag(name, candidate, "rolled_back_because", reason[:4900])
    champion = alias_version(client, name, CHAMPION)
    return Move(f"abort_{alias}", champion, candidate, alias_version(client, name, PREVIOUS_CHAMPION))
