"""Group commit: the store calls of every request in flight, several to a commit.

Each request makes two store calls, `begin` and then `record` before its answer, and each is a
commit that waits for the disk (an fsync) or for a round trip (Redis, which fsyncs before it
replies). One commit per call, made on the event loop, would hold the loop through every wait:
requests would queue behind each other's fsyncs. Here the calls that requests make during one turn
of the event loop are gathered and run together at the end of it, by the engine's `loop_calls`
(one SQLite transaction, then one sync of its log for all; one Redis pipeline), while the loop
goes on reading, validating and scoring other requests. A busy service makes few commits, each for
several requests; a request alone waits for no company (its call runs at the end of the same turn).
Each call stays atomic on its own, and a request is answered only after its own `record` is
durable: a 200 still means the decision is recorded.
"""

from __future__ import annotations

import asyncio
from datetime import date
from typing import TYPE_CHECKING

from ml_assets.serving.online_store import Begun, Call, Decision, OnlineStore, RiskTable

if TYPE_CHECKING:
    from ml_assets.serving.features import Tx


class GroupCommit:
    def __init__(self, store: OnlineStore):
        self._calls = store.loop_calls()
        self._waiting: list[tuple[Call, asyncio.Future]] = []
        self._tasks: set[asyncio.Task] = set()  # groups under way (the loop keeps weak references)
        self.groups = 0  # groups run, and the calls they held: their average size
        self.calls = 0

    async def begin(self, txs: list[Tx]) -> Begun:
        return await self._call(Call("begin", txs))

    async def record(self, decisions: list[Decision]) -> dict[str, Decision]:
        return await self._call(Call("record", decisions))

    async def merchant_risk(self, day: date) -> RiskTable:
        return await self._call(Call("merchant_risk", day))

    async def aclose(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks)
        await self._calls.aclose()

    async def _call(self, call: Call):
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self._waiting:  # the first call of this turn: its group starts once the turn is done
            loop.call_soon(self._start)
        self._waiting.append((call, future))
        return await future

    def _start(self) -> None:
        group, self._waiting = self._waiting, []
        task = asyncio.get_running_loop().create_task(self._run(group))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, group: list[tuple[Call, asyncio.Future]]) -> None:
        self.groups += 1
        self.calls += len(group)
        try:
            results = await self._calls.run_calls([call for call, _ in group])
        except Exception as e:  # the store's fault: every call of the group fails with it
            results = [e] * len(group)
        for (_, future), result in zip(group, results, strict=True):
            if future.done():  # its request was cancelled meanwhile
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
