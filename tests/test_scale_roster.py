"""A roster that does not reload the world (issue 19): a node's pop, which saves its last-seen
time, updates that node's entry in the coordinator's view of who is online; it never makes the
next question about online nodes read every worker from the database again."""

import json
import sys
from typing import Any

import pytest

from coordinator import roster
from coordinator.storage.sql import Tx
from tests.api_support import fetch_one, generate, node, requester, small
from tests.conftest import RunningCoordinator
from tests.helpers import Api


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The roster's whole reads of the workers table; every pop writes the node's last-seen time; and the
    periodic reload (for other processes' changes) is far off, so only a save could cause one."""
    count = [0]
    original = Tx.list_workers

    async def counted(self: Tx) -> Any:
        if sys._getframe(1).f_globals["__name__"] == roster.__name__:  # the roster's, not upkeep's rounds
            count[0] += 1
        return await original(self)

    monkeypatch.setattr(Tx, "list_workers", counted)
    monkeypatch.setattr(roster, "LAST_SEEN_WRITE_INTERVAL", 0.0)
    monkeypatch.setattr(roster, "ROSTER_RELOAD_SECONDS", 3600.0, raising=False)
    monkeypatch.setattr(roster, "ROSTER_REFRESH_SECONDS", 3600.0, raising=False)  # its name before issue 19
    return count


async def online_count(api: Api, model: str = "tiny-sd") -> int:
    models = (await api.get("/v2/status/models")).body
    return next((entry["count"] for entry in models if entry["name"] == model), 0)


async def last_seen(coordinator: RunningCoordinator, name: str) -> float:
    row = await fetch_one(coordinator, "SELECT info FROM workers WHERE name = ?", name)
    assert row is not None
    return float(json.loads(row["info"])["last_seen"])


async def test_a_last_seen_update_does_not_reload_the_roster(coordinator: RunningCoordinator, loads: list[int]) -> None:
    alice = await coordinator.create_account("alice", kudos=100)
    api = requester(coordinator, alice)
    first = node(coordinator, await coordinator.create_account("owner-1"), "first")
    assert (await first.pop()).status == 200
    assert await online_count(api) == 1
    read_once = loads[0]
    assert read_once == 1

    seen = await last_seen(coordinator, "first")
    for _ in range(5):
        assert (await first.pop()).status == 200  # each saves the node's last-seen time
        await generate(api, small())  # asks which online nodes can serve it (warnings, ETA)
        assert await online_count(api) == 1
        assert (await first.serve_one(wait=0)) is not None
    assert await last_seen(coordinator, "first") > seen  # the saves happened
    assert loads[0] == read_once  # and none of them reloaded the roster

    # A node coming online is seen at once, from its own pop, still without a reload.
    second = node(coordinator, await coordinator.create_account("owner-2"), "second")
    assert (await second.pop()).status == 200
    assert await online_count(api) == 2
    assert loads[0] == read_once
