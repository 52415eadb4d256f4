"""A roster that does not reload the world (issue 19): a node's pop, which saves its last-seen
time, updates that node's entry in the coordinator's view of who is online; it never makes the
next question about online nodes read every worker from the database again."""

import json
import sqlite3
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


async def test_a_result_does_not_make_the_next_question_rebuild_the_view(coordinator: RunningCoordinator) -> None:
    """A result moves its node's counters and speed; the node's next pop brings them to the roster, which
    updates the entry its online view holds instead of dropping the view (a rebuild is O(online nodes))."""
    alice = await coordinator.create_account("alice", kudos=100)
    api, worker = requester(coordinator, alice), node(coordinator, await coordinator.create_account("owner"), "n1")
    roster_ = coordinator.broker.roster
    assert (await worker.pop()).status == 200
    for _image in range(2):
        await generate(api, small())  # asks the online view which nodes can serve it
        view = roster_._view
        assert view is not None
        assert (await worker.serve_one(wait=0)) is not None  # pop, and a result
        assert (await worker.pop()).status == 200  # brings the node's new counters
        assert roster_._view is view, "the online view was dropped"
        stored = await fetch_one(coordinator, "SELECT info FROM workers WHERE name = ?", "n1")
        assert stored is not None
        assert view.workers[0].requests_fulfilled == json.loads(stored["info"])["requests_fulfilled"] == _image + 1


async def test_a_pops_last_seen_write_checks_no_name_or_key(
    coordinator: RunningCoordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node's re-poll writes only its last-seen time (`save_worker_state`), without the check that its name
    and key are nobody else's, which a save of a new or changed node makes."""
    owner = await coordinator.create_account("owner")
    worker = node(coordinator, owner, "n1")
    assert (await worker.pop()).status == 200
    before = await fetch_one(coordinator, "SELECT info FROM workers WHERE name = ?", "n1")
    assert before is not None

    async def checked_save(*_args: Any) -> None:
        raise AssertionError("a last-seen write went through save_worker")

    monkeypatch.setattr(Tx, "save_worker", checked_save)
    services = coordinator.broker.services
    later = services.clock() + 60
    monkeypatch.setattr(services, "clock", lambda: later)
    assert (await worker.pop()).status == 200
    after = await fetch_one(coordinator, "SELECT info FROM workers WHERE name = ?", "n1")
    assert after is not None and json.loads(after["info"])["last_seen"] == later


def test_worker_lookups_by_name_and_the_name_or_key_check_use_indexes() -> None:
    """On SQLite `lower(name) = lower(?)` and `name = ? OR public_key = ?` each scanned every worker (the column is
    COLLATE NOCASE); each pop that saves its node asked it. EXPLAIN shows index searches only."""
    from coordinator.storage.migrations import migration_scripts
    from coordinator.storage.sql import NAME_OR_KEY_TAKEN, WORKER_NAME_IS

    database = sqlite3.connect(":memory:")
    for _version, script in migration_scripts("sqlite"):
        database.executescript(script)
    for sql, args in (
        (NAME_OR_KEY_TAKEN.format(WORKER_NAME_IS["sqlite"]), ("n", "id", "key", "id")),
        (f"SELECT * FROM workers WHERE {WORKER_NAME_IS['sqlite']}", ("n",)),
    ):
        plan = [row[3] for row in database.execute(f"EXPLAIN QUERY PLAN {sql}", args)]
        assert not [step for step in plan if step.startswith("SCAN")], plan


async def test_upkeeps_question_for_maintenance_run_out_reads_an_index(coordinator: RunningCoordinator) -> None:
    """Upkeep asks every round which workers' automatic maintenance ran out: at 10,000 nodes a scan of every
    worker's JSON held the loop 30-50 ms each time. Each engine's plan reads the partial index instead."""
    from coordinator.storage.sql import MAINTENANCE_OVER

    database = coordinator.broker.services.database
    question = MAINTENANCE_OVER[database.dialect]
    async with database.transaction() as tx:
        if database.dialect == "sqlite":
            plan = [row["detail"] for row in await tx.driver.fetchall(f"EXPLAIN QUERY PLAN {question}", (0.0,))]
        else:  # an empty table: PostgreSQL would scan it; ask whether the index can answer at all
            await tx.driver.execute("SET LOCAL enable_seqscan = off")
            plan = [row["QUERY PLAN"] for row in await tx.driver.fetchall(f"EXPLAIN {question}", (0.0,))]
    assert any("workers_maintenance_until" in step for step in plan), plan
    assert not any(step.startswith(("SCAN", "Seq Scan")) for step in plan), plan


async def test_other_components_changes_reach_the_roster_a_slice_at_a_time(
    coordinator: RunningCoordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After its first whole read the roster reads the workers table a slice per sweep (never every worker at
    once), and so learns what it was not told: a maintenance set in the table, a worker deleted."""
    monkeypatch.setattr(roster, "ROSTER_SLICE_MIN", 2)
    slices: list[int] = []
    original = roster.worker_slice

    async def counted(tx: Tx, after: str, limit: int) -> Any:
        workers = await original(tx, after, limit)
        slices.append(len(workers))
        return workers

    monkeypatch.setattr(roster, "worker_slice", counted)
    owners = [await coordinator.create_account("owner-1"), await coordinator.create_account("owner-2")]
    names = [f"n{i}" for i in range(6)]
    for index, name in enumerate(names):
        assert (await node(coordinator, owners[index // 3], name).pop()).status == 200
    the_roster, services = coordinator.broker.roster, coordinator.broker.services
    assert sorted(w.name for w in await the_roster.online()) == names
    by_id = sorted(await the_roster.online(), key=lambda worker: worker.id)
    # Slices of 2 in id order: deleted are the first id after a slice's end and the table's last id.
    held, gone = by_id[0], [by_id[2], by_id[-1]]
    async with services.database.transaction() as tx:
        held.maintenance = True  # set in the table by someone else: nobody tells this roster
        await tx.save_worker_state(held)
        for worker in gone:
            await tx.delete_worker(worker.id)
    start = services.clock()
    # 6 workers, 2 a slice: four sweeps read them all, within ONLINE_RECHECK_SECONDS: what a slice shows
    # moves a node out of the online list at once, not at the next look at every node.
    for step in range(1, 6):
        monkeypatch.setattr(services, "clock", lambda step=step: start + 1.2 * roster.ROSTER_SWEEP_SECONDS * step)
        online = sorted(w.name for w in await the_roster.online())
    assert services.clock() - start < roster.ONLINE_RECHECK_SECONDS
    assert online == sorted(worker.name for worker in by_id[1:-1] if worker not in gone)
    assert not [worker for worker in gone if worker.id in the_roster._known]
    assert slices and max(slices) <= 2 and the_roster.loads == 1


async def test_a_node_gone_quiet_leaves_the_online_list_within_a_look_at_every_node(
    coordinator: RunningCoordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nobody tells the roster that a node went quiet. The look at every node finds it within
    ONLINE_RECHECK_SECONDS, a share of the nodes per question (all 10,000 at once held one request 10-18 ms),
    going on from where the last share ended. Slices are off here: only the look can find it."""
    monkeypatch.setattr(roster, "ROSTER_SWEEP_SECONDS", 3600.0)
    owners = [await coordinator.create_account("owner-1"), await coordinator.create_account("owner-2")]
    nodes = [node(coordinator, owners[index // 3], f"n{index}") for index in range(6)]
    for each in nodes:
        assert (await each.pop()).status == 200
    the_roster, services = coordinator.broker.roster, coordinator.broker.services
    by_id = sorted(await the_roster.online(), key=lambda worker: worker.id)
    first, last = by_id[0].name, by_id[-1].name  # quiet: the look reaches them first and last
    start, online_seconds = services.clock(), services.config.worker_online_seconds
    monkeypatch.setattr(services, "clock", lambda: start + online_seconds - 1)
    for each in nodes:
        if each.name not in (first, last):
            assert (await each.pop()).status == 200  # the others stay online
    monkeypatch.setattr(services, "clock", lambda: start + online_seconds - 0.5)
    assert {first, last} <= {worker.name for worker in await the_roster.online()}  # a whole look: still online
    step = roster.ONLINE_RECHECK_SECONDS / 4  # six nodes: 1.5 a step, 1 or 2 looked at
    names: list[set[str]] = []
    for turn in range(1, 5):
        monkeypatch.setattr(services, "clock", lambda turn=turn: start + online_seconds - 0.5 + step * turn)
        names.append({worker.name for worker in await the_roster.online()})
    assert first not in names[0] and last in names[2]  # each in its turn, no sooner, no later
    assert names[3] == {worker.name for worker in by_id[1:-1]}


async def test_checks_sum_the_able_nodes_speed_once_per_forecast(
    coordinator: RunningCoordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A check's wait needs the speed of every node able to serve the request (O(nodes of its model)); a
    request's checks within one `forecast_seconds` reuse one sum, as they reuse one forecast."""
    from coordinator import outlook

    sums: list[int] = []
    original = outlook.capacity

    def counted(workers: list[Any], model: str | None, network: dict[str, float]) -> float:
        sums.append(len(workers))
        return original(workers, model, network)

    monkeypatch.setattr(outlook, "capacity", counted)
    services = coordinator.broker.services
    start = services.clock()
    monkeypatch.setattr(services, "clock", lambda: start)
    owner = await coordinator.create_account("owner")
    for name in ("n1", "n2"):
        assert (await node(coordinator, owner, name).pop()).status == 200
    api = requester(coordinator, await coordinator.create_account("alice", kudos=100))
    request_id = await generate(api, small())
    for _check in range(5):
        answer = await api.get(f"/v2/generate/check/{request_id}")
        assert answer.status == 200 and answer.body["is_possible"] is True
    assert sums == [2]  # both nodes, summed once
    monkeypatch.setattr(services, "clock", lambda: start + services.config.forecast_seconds)
    assert (await api.get(f"/v2/generate/check/{request_id}")).status == 200
    assert sums == [2, 2]
