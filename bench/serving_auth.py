"""Serving with authentication on, against off, in the same run (`python -m bench serving_auth`).

Two `python -m ml_assets.serving` processes on the same registered model (bench.serving's 200-tree
LightGBM), each on its own fresh SQLite online store: one without tokens, one with both scopes'
tokens, sent `Authorization: Bearer` on every request. Single-transaction requests from 8
concurrent keep-alive clients, in rounds that alternate which server goes first; each round sends
both servers the same transactions (same history, same work). The figure is the median round.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from bench.common import line, save
from bench.serving import CONCURRENCY, _free_port, _load, _model, _start, _stop, _summary

WARMUP, ROUNDS, PER_ROUND = 300, 4, 1500
TOKENS = {"scoring": "bench-scoring-token-0123456789", "operations": "bench-operations-token-0123456789"}
GOAL_COST = 0.05  # at most 5% of throughput


def _bodies(n: int) -> list[bytes]:
    """Landing-contract transactions over 500 cards, as one-transaction request bodies."""
    from ml_assets_tests.conftest import tx

    return [
        json.dumps(tx(i, card_id=f"card-{i % 500}") | {"event_time": f"2026-01-15T{i // 3600 % 24:02d}:"
                   f"{i // 60 % 60:02d}:{i % 60:02d}Z"}).encode()
        for i in range(n)
    ]  # fmt: skip


def _surface_seconds(tokens: dict, requests: int = 200_000) -> float:
    """Per request, what `surface.Surface` costs in this process, in front of an app that does
    nothing (auth on when `tokens` has any): the door alone, without the network's noise."""
    import asyncio
    import time

    from ml_assets.serving.auth import Guard
    from ml_assets.serving.surface import Surface

    async def nothing(scope, receive, send):
        return None

    surface = Surface(nothing, Guard(tokens), max_in_flight=64)
    headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"), (b"content-length", b"300")]
    headers.append((b"authorization", f"Bearer {TOKENS['scoring']}".encode()))
    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": headers}

    async def run() -> float:
        t0 = time.perf_counter()
        for _ in range(requests):
            await surface(scope, None, None)
        return (time.perf_counter() - t0) / requests

    return min(asyncio.run(run()) for _ in range(3))


def main() -> dict:
    from ml_assets.lib.settings import environment_without_settings
    from ml_assets.serving.auth import OPERATIONS, SCORING, token_settings

    bodies = _bodies(WARMUP + ROUNDS * PER_ROUND)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "lake").mkdir()
        tracking_uri, name, _, _ = _model(root)
        base = environment_without_settings() | {
            "ML_ASSETS_DATA_DIR": str(root),
            "MLFLOW_TRACKING_URI": tracking_uri,
            "ML_ASSETS_MODEL_NAME": name,
            "ML_ASSETS_SERVING_POLL_SECONDS": "1",  # as bench.serving: the registry poller's pauses count
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
        tokens = {token_settings(scope)[0]: TOKENS[scope] for scope in (SCORING, OPERATIONS)}
        servers, ports = {}, {}
        try:
            for mode, extra in (("off", {}), ("on", tokens)):
                ports[mode] = _free_port()
                env = base | extra | {"ML_ASSETS_ONLINE_STORE": f"sqlite:///{root / f'online-{mode}.db'}"}
                servers[mode] = _start(
                    [sys.executable, "-m", "ml_assets.serving", "--port", str(ports[mode])],
                    env,
                    f"http://127.0.0.1:{ports[mode]}/health",
                    root / f"server-{mode}.log",
                )
            headers = {"off": "", "on": f"Authorization: Bearer {TOKENS['scoring']}\r\n"}
            for mode in servers:
                _load(ports[mode], "/predict", bodies[:WARMUP], CONCURRENCY, headers=headers[mode])
            rounds: dict[str, list[dict]] = {"off": [], "on": []}
            for r in range(ROUNDS):
                chunk = bodies[WARMUP + r * PER_ROUND : WARMUP + (r + 1) * PER_ROUND]
                for mode in ("off", "on") if r % 2 == 0 else ("on", "off"):
                    run = _load(ports[mode], "/predict", chunk, CONCURRENCY, headers=headers[mode])
                    rounds[mode].append(_summary([run]))
        finally:
            for proc in servers.values():
                _stop(proc)

    def median(mode: str, key: str) -> float:
        return statistics.median(x[key] for x in rounds[mode])

    off, on = ({k: median(m, k) for k in ("per_s", "p50_ms", "p99_ms")} for m in ("off", "on"))
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average at the end: {load} (on {os.cpu_count()} cores)")
    print(
        f"single transactions at concurrency {CONCURRENCY}, {ROUNDS} rounds of {PER_ROUND} requests "
        "to each server, median round"
    )
    print(line("auth on: throughput", on["per_s"], "req/s", off["per_s"], "auth off"))
    print(line("auth on: p50 latency", on["p50_ms"], "ms", off["p50_ms"], "auth off"))
    print(line("auth on: p99 latency", on["p99_ms"], "ms", off["p99_ms"], "auth off"))
    cost = 1 - on["per_s"] / off["per_s"]
    print(f"  throughput cost of authentication: {cost:.1%} (aim: at most {GOAL_COST:.0%})")
    door_off, door_on = _surface_seconds({}), _surface_seconds({SCORING: (TOKENS["scoring"],)})
    print("the surface alone, in this process, in front of an app doing nothing (best of 3)")
    print(line("auth on: per request", door_on * 1e6, "us", door_off * 1e6, "auth off"))
    # One process serves: a request's share of its time is 1/throughput.
    share = (door_on - door_off) * off["per_s"]
    print(f"  authentication's share of a request at the auth-off throughput: {share:.2%}")
    failures = sum(x["failures"] for m in rounds.values() for x in m)
    if failures:
        print(f"  FAILED REQUESTS: {failures}")
    figures = {"off": off, "on": on, "rounds": rounds, "throughput_cost": cost}
    figures |= {"surface_us": {"off": door_off * 1e6, "on": door_on * 1e6}, "auth_share": share}
    figures["load_average"] = os.getloadavg()
    save("serving_auth", figures)
    return figures


if __name__ == "__main__":
    main()
