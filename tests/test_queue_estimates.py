"""Issue 15: the pure rules behind wait times (coordinator/estimates.py), on hand-made nodes and queues."""

import random
from dataclasses import replace

import pytest

from coordinator.estimates import (
    SimNodes,
    WaitingJob,
    record_speed,
    simulate,
)
from coordinator.overtaking import ARRIVAL_MIN, Arrival, Overtaking
from coordinator.storage.records import JobRecord, QueueEntry, Worker, WorkerCaps


def worker(name: str, models: list[str], speed: float | None = None) -> Worker:
    node = replace(Worker.new(name, name, 1, 0.0), models=models, max_pixels=2**20)
    if speed is not None:
        node.speeds = {model: [speed, 1.0, 3] for model in models}
    return node


def waiting(request: str, index: int, models: list[str], megapixelsteps: float) -> WaitingJob:
    entry = QueueEntry(
        job_id=f"{request}-{index}",
        request_id=request,
        models=models,
        tier=1,
        rank=-index,
        pixels=1_000_000,
        steps=round(megapixelsteps),
        nsfw=False,
        img2img=False,
        painting=False,
        lora=False,
        post_processing=False,
        trusted_only=False,
    )
    return WaitingJob(entry, (1, -index))


def test_simulation_plays_pop_over_heterogeneous_nodes() -> None:
    fast, slow = worker("fast", ["a"], 3.0), worker("slow", ["a", "b"], 1.0)
    nodes = SimNodes([fast, slow], [WorkerCaps.of(fast), WorkerCaps.of(slow)], {})
    # In pop's order: r1's two jobs, then r2's (model b: only the slow node), then r3.
    queue = [
        waiting("r1", 0, ["a"], 3),
        waiting("r1", 1, ["a"], 3),
        waiting("r2", 2, ["b"], 3),
        waiting("r3", 3, ["a"], 3),
    ]
    finish, drained = simulate(nodes, {}, queue, now=100.0)
    # As pop hands them out: both free at 100; fast takes r1-0 (→101), slow the next job it can serve, r1-1
    # (→103); fast, free at 101, passes r2 (model b) for r3 (→102); slow, free at 103, takes r2 (→106).
    assert finish == {"r1": 103.0, "r2": 106.0, "r3": 102.0}
    assert drained == {"a": 103.0, "b": 106.0}


def test_first_result_is_a_warm_up_and_stalls_are_bounded() -> None:
    node = worker("n", ["a"])
    record_speed(node, "a", 10.0, assigned_at=0.0, now=100.0)  # loading the model: 0.1 MPS/s
    record_speed(node, "a", 10.0, assigned_at=100.0, now=105.0)  # replaces it: 2 MPS/s
    assert node.speeds["a"][0] / node.speeds["a"][1] == 2.0
    record_speed(node, "a", 10.0, assigned_at=200.0, now=1200.0)  # a stall: counted as 4× slower, not 200×
    work, seconds = 10 * 0.8 + 10, 5 * 0.8 + 20
    assert node.speeds["a"][0] / node.speeds["a"][1] == work / seconds


def test_later_richer_arrivals_count_only_once_there_is_a_sample() -> None:
    arrivals = [Arrival(at=float(i), priority=500.0, work=2.0, models=("a",)) for i in range(ARRIVAL_MIN)]

    def expected(priority: float, models: tuple[str, ...], arrived: list[Arrival], wait: float = 60.0) -> float:
        return Overtaking(arrived, now=30.0, ageing=5.0).work(priority, models, wait, now=30.0)

    # Each passes a 0-kudos request for 100 s (500 / 5), capped by its 60 s wait; 20 arrivals over 30 s.
    assert expected(0.0, ("a",), arrivals) == pytest.approx(20 * 2.0 * 60 / 30)
    assert expected(400.0, ("a",), arrivals) == pytest.approx(20 * 2.0 * 20 / 30)  # 100 kudos apart: for 20 s
    assert expected(0.0, ("b",), arrivals) == 0.0  # another model's
    assert expected(600.0, ("a",), arrivals) == 0.0  # poorer: never passes it
    assert expected(0.0, ("a",), arrivals[:-1]) == 0.0  # too few to trust


def by_definition(arrivals: list[Arrival], priority: float, models: tuple[str, ...], wait: float, now: float) -> float:
    """Overtaking work as the docstring defines it, one arrival at a time: each recent arrival of higher
    priority on a shared model adds its rate of work × min((k − p) / ageing, wait)."""
    recent = [a for a in arrivals if now - a.at <= 300.0]
    span = max(now - min(a.at for a in recent), 30.0)
    return sum(
        a.work / span * min((a.priority - priority) / 5.0, wait)
        for a in recent
        if a.priority > priority and (not a.models or not models or set(models) & set(a.models))
    )


def test_the_index_answers_as_a_pass_over_every_arrival() -> None:
    """`Overtaking` reads sums off sorted groups (and looks at arrivals added since one by one); on random
    arrivals of mixed priorities, models and ages its answers are the definition's, for waits short and long."""
    chance = random.Random(19)
    now = 2_000_000_000.0  # priorities of ~10^10, as real timestamps give: sums must stay exact
    model_sets = [(), ("a",), ("b",), ("a", "b"), ("c",)]

    def arrival(age: float) -> Arrival:
        at = now - chance.uniform(0, age)
        return Arrival(at, chance.uniform(0, 3000) + 5.0 * at, chance.uniform(0.1, 50), chance.choice(model_sets))

    # Some indexed ones are older than the window; those added since the index was built are the newest.
    indexed, added = [arrival(400.0) for _ in range(500)], [arrival(1.0) for _ in range(40)]
    index = Overtaking(indexed, now, ageing=5.0)
    for later in added:
        index.add(later)
    for _ in range(200):
        priority = chance.uniform(0, 3000) + 5.0 * (now - chance.uniform(0, 300))
        models, wait = chance.choice(model_sets), chance.choice([0.0, 1.0, 30.0, 600.0])
        assert index.work(priority, models, wait, now) == pytest.approx(
            by_definition(indexed + added, priority, models, wait, now), rel=1e-9, abs=1e-6
        )


def test_idle_nodes_are_looked_at_only_while_jobs_wait() -> None:
    """Nodes holding nothing take their turns without a heap entry, each made a SimNode only when its turn
    comes: an empty queue looks at none of 1,000 online nodes, one waiting job at the first that serves it."""
    idle = [worker(f"n{i:04}", ["b" if i < 10 else "a"], 1.0) for i in range(1000)]
    nodes = SimNodes(idle, [WorkerCaps.of(node) for node in idle], {})
    assert simulate(nodes, {}, [], now=100.0) == ({}, {})
    assert len(nodes._made) == 0
    finish, _ = simulate(nodes, {}, [waiting("r1", 0, ["a"], 3)], now=100.0)
    assert finish == {"r1": 103.0}
    assert len(nodes._made) == 11  # ten that serve only b, then the first serving a


def test_a_busy_node_free_now_keeps_its_turn_among_idle_ones() -> None:
    """A node whose held job is overdue is free now, like the idle ones: the turns still go in the nodes'
    order (index), as they did when every node had a place in the heap."""
    first, busy, last = worker("first", ["a"], 1.0), worker("busy", ["a"], 2.0), worker("last", ["a"], 4.0)
    overdue = JobRecord(
        id="h-0", request_id="h", index=0, seed="1", state="processing", model="a", worker_id=busy.id, assigned_at=1.0
    )
    overdue.job_document = {"payload": {"width": 1000, "height": 1000, "ddim_steps": 2}}
    busy.last_result_at = 0.0  # it began the held job at its assignment, long ago
    nodes = SimNodes([first, busy, last], [WorkerCaps.of(n) for n in (first, busy, last)], {})
    queue = [waiting("r0", 0, ["a"], 4), waiting("r1", 1, ["a"], 4), waiting("r2", 2, ["a"], 4)]
    finish, _ = simulate(nodes, {busy.id: [overdue]}, queue, now=100.0)
    # first (1 mps) takes r0, busy (2 mps, its held job done long ago) r1, last (4 mps) r2.
    assert finish == {"h": 100.0, "r0": 104.0, "r1": 102.0, "r2": 101.0}
