"""Escrowed rewards (issue 17): a node's reward is held until its verification window closes, then released
to its owner; uptime goes the same way. Over real HTTP on both engines; every test checks money (balances,
ledger rows, the audit), and time moves by the coordinator's clock, never by sleeping."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from coordinator.config import VerificationSettings
from protocol.kudos import image_kudos
from tests.api_support import (
    balance,
    custom_coordinator,
    fetch_all,
    generate,
    ledger_rows,
    node,
    requester,
    small,
)
from tests.conftest import RunningCoordinator
from tests.helpers import Api, tiny_webp

PRICE = image_kudos(width=64, height=64, steps=4)
WINDOW = 3600.0
# Escrow without spot checks: these tests are about holding and releasing, not about checking.
NO_CHECKS = VerificationSettings(enabled=True, window=WINDOW, new_rate=0.0, settled_rate=0.0, suspect_rate=0.0)


@dataclass
class Clock:
    """The coordinator's clock, moved forward by the test."""

    offset: float = 0.0

    def __call__(self) -> float:
        import time

        return time.time() + self.offset


@asynccontextmanager
async def escrowed(
    tmp_path: Path, database_url: str | None, **settings: object
) -> AsyncIterator[tuple[RunningCoordinator, Clock]]:
    async with custom_coordinator(tmp_path, database_url, verification=NO_CHECKS, **settings) as coordinator:
        clock = Clock()
        coordinator.broker.services.clock = clock
        yield coordinator, clock


async def held(coordinator: RunningCoordinator, apikey: str) -> tuple[float, float]:
    """(available, held) as the owner's own `find_user` shows them."""
    reply = await Api(coordinator.url, apikey=apikey).get("/v2/find_user")
    assert reply.status == 200, reply.body
    return reply.body["kudos"], reply.body["held_kudos"]


async def audit_ok(coordinator: RunningCoordinator) -> None:
    report = await coordinator.broker.bank.audit()
    assert report.ok, report.problems


async def test_reward_is_held_then_released_after_a_clean_window(tmp_path: Path, database_url: str | None) -> None:
    async with escrowed(tmp_path, database_url) as (coordinator, clock):
        payer = await coordinator.create_account("payer", kudos=100)
        owner = await coordinator.create_account("owner")
        worker = node(coordinator, owner, "escrowed-node")
        await generate(requester(coordinator, payer), small())
        reply = await worker.serve_one()
        assert reply is not None and reply.status == 200, reply
        assert reply.body["reward"] == PRICE  # what the node earned, as AI Horde answers it

        assert await held(coordinator, owner.apikey) == (0.0, PRICE)  # earned, not yet spendable
        assert await balance(coordinator, payer) == round(100 - PRICE, 2)
        await coordinator.broker.upkeep.release_escrow()  # the window is still open: nothing moves
        assert await held(coordinator, owner.apikey) == (0.0, PRICE)

        clock.offset = WINDOW + 1
        assert await coordinator.broker.upkeep.release_escrow() in (0, 1)  # the background round may be first
        assert await held(coordinator, owner.apikey) == (PRICE, 0.0)
        kinds = [(row["kind"], row["amount"]) for row in await ledger_rows(coordinator)]
        assert kinds[-3:] == [("spend", PRICE), ("hold", PRICE), ("release", PRICE)]
        rows = await ledger_rows(coordinator)
        hold, release = rows[-2], rows[-1]
        assert hold["reference"].startswith("hold:") and release["reference"] == "release:" + hold["reference"][5:]
        assert release["target"] == owner.id and hold["target"] == release["source"]
        await audit_ok(coordinator)


async def test_uptime_is_held_like_any_reward(tmp_path: Path, database_url: str | None) -> None:
    async with escrowed(tmp_path, database_url, uptime_kudos_per_10_minutes=50.0) as (coordinator, clock):
        owner = await coordinator.create_account("owner")
        worker = node(coordinator, owner, "uptime-node")
        assert (await worker.pop()).status == 200  # online from now
        await coordinator.broker.upkeep.pay_uptime()  # starts its uptime clock
        clock.offset = 601
        assert (await worker.pop()).status == 200  # still online
        await coordinator.broker.upkeep.pay_uptime()
        assert await held(coordinator, owner.apikey) == (0.0, 50.0)
        assert [row["kind"] for row in await ledger_rows(coordinator)] == ["hold"]

        clock.offset = 601 + WINDOW + 1
        await coordinator.broker.upkeep.release_escrow()
        assert await held(coordinator, owner.apikey) == (50.0, 0.0)
        assert [row["kind"] for row in await ledger_rows(coordinator)] == ["hold", "release"]
        await audit_ok(coordinator)


async def test_without_verification_rewards_are_paid_at_once(coordinator: RunningCoordinator) -> None:
    payer = await coordinator.create_account("payer", kudos=100)
    owner = await coordinator.create_account("owner")
    await generate(requester(coordinator, payer), small())
    reply = await node(coordinator, owner, "plain-node").serve_one()
    assert reply is not None and reply.status == 200
    assert await held(coordinator, owner.apikey) == (PRICE, 0.0)
    assert [row["kind"] for row in await ledger_rows(coordinator)][-1] == "reward"


async def test_an_owners_own_node_paid_from_its_own_funds_holds_nothing_and_is_not_checked(
    tmp_path: Path, database_url: str | None
) -> None:
    """A self-paid reward (coordinator/economy.py) moves the owner's own kudos back to it: nothing is held,
    so it adds no hold or release to the node's public verified record; and the image is never spot-checked,
    so it builds no passed checks either. Another owner's image, at the same rate of 1, is checked."""
    check_all = replace(NO_CHECKS, new_rate=1.0, settled_rate=1.0, suspect_rate=1.0)
    async with custom_coordinator(tmp_path, database_url, verification=check_all) as coordinator:
        owner = await coordinator.create_account("owner", kudos=100)
        mine = node(coordinator, owner, "self-served")
        await generate(requester(coordinator, owner), small())
        reply = await mine.serve_one()
        assert reply is not None and reply.status == 200, reply
        assert reply.body["reward"] == PRICE
        assert await held(coordinator, owner.apikey) == (100.0, 0.0)
        assert [row["kind"] for row in await ledger_rows(coordinator)] == ["admin", "spend", "reward"]
        assert await fetch_all(coordinator, "SELECT job_id FROM checks") == []
        # The same node serving someone else: held, and checked.
        await generate(requester(coordinator, await coordinator.create_account("payer", kudos=100)), small())
        popped = await mine.pop()
        job_id, seed = popped.body["ids"][0], popped.body["jobs"][0]["document"]["payload"]["seed"]
        served = await mine.submit(job_id, seed, image=tiny_webp((1, 2, 3)))  # not the first image's pixels
        assert served.status == 200 and served.body["reward"] == PRICE, served.body
        assert await held(coordinator, owner.apikey) == (100.0, PRICE)
        assert len(await fetch_all(coordinator, "SELECT job_id FROM checks")) == 1
        await audit_ok(coordinator)
