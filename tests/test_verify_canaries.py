"""Canary jobs (issue 17): a trusted node's image is asked again of a new node alone, as an ordinary job of the
verifier account; a cheater is caught by it (its answer disagrees, a third owner's node decides), an honest
node passes, and the canary's pop answer is field for field an ordinary job's. Real coordinator, real HTTP,
real tiny-pipeline inference; the upkeep chore is called directly."""

import json
from pathlib import Path

import pytest

from coordinator.config import VerificationSettings
from tests.api_support import count, fetch_all, generate, requester, small
from tests.test_verify_checks import assert_alike
from tests.verify_support import Network, audit_ok, network

pytestmark = pytest.mark.usefixtures("one_torch_thread")
# Ordinary checks never (a new node's rate is 0.5 only for `wants_canary`'s sake; the test never lets the
# cheater deliver an ordinary job), canaries as often as the upkeep asks.
CANARIES = VerificationSettings(enabled=True, new_rate=0.5, settled_rate=0.0, suspect_rate=1.0, canary_interval=3600.0)


async def trusted_reference(net: Network) -> None:
    """`f32` and `bf16` become trusted (so only `cheater` wants canaries), and `f32` makes an image: the reference
    set's first."""
    for name in ("f32", "bf16"):
        assert (await net.nodes[name].worker.pop()).status == 200  # registered
        async with net.coordinator.broker.services.database.transaction() as tx:
            worker = await tx.worker_by("name", name)
            assert worker is not None
            worker.trusted = True
            await tx.save_worker(worker)
    await generate(net.payer, small(steps=8, seed="77"))
    await net.serve("f32")
    assert await count(net.coordinator, "canaries") == 1 and await count(net.coordinator, "checks") == 0


async def canary_for_cheater(net: Network) -> None:
    assert (await net.nodes["cheater"].worker.pop()).status == 200  # online, nothing to do yet
    await net.coordinator.broker.upkeep.canaries.issue()  # (or the background round did it first)
    assert await count(net.coordinator, "checks") == 1
    assert await net.nodes["bf16"].serve_one() is None  # pinned to the cheater: nobody else gets it


@pytest.mark.parametrize("cheat", ["noise", None])
async def test_a_canary_catches_a_cheater_and_passes_an_honest_node(
    tmp_path: Path, database_url: str | None, tiny_model_dir: Path, cheat: str | None
) -> None:
    async with network(tmp_path, database_url, tiny_model_dir, cheat, CANARIES) as net:
        await trusted_reference(net)
        await canary_for_cheater(net)
        await net.serve("cheater")
        if cheat:
            await net.serve("bf16")  # the answers disagree: a third owner's node decides
            assert await net.verdicts() == {"cheater": ["fail"], "f32": ["pass"], "bf16": ["pass"]}
            assert await net.held("cheater") == (0.0, 0.0)
        else:
            assert await net.verdicts() == {"f32": ["pass"], "cheater": ["pass"]}
            assert (await net.held("cheater"))[1] > 0  # the canary was paid like any job, held like any reward
        await audit_ok(net.coordinator)


async def test_a_canary_looks_like_any_job_to_its_node(
    tmp_path: Path, database_url: str | None, tiny_model_dir: Path
) -> None:
    async with network(tmp_path, database_url, tiny_model_dir, None, CANARIES) as net:
        await trusted_reference(net)
        await canary_for_cheater(net)
        node = net.nodes["cheater"]
        canary = await node.worker.pop()
        document = canary.body["jobs"][0]["document"]
        image = node.make(document["model"], document["payload"])
        assert (await node.worker.submit(canary.body["ids"][0], document["payload"]["seed"], image=image)).status == 200
        other = requester(net.coordinator, await net.coordinator.create_account("other", kudos=100))
        await generate(other, small(steps=8, seed="77"))  # the reference's very request, by an ordinary requester
        ordinary = await node.worker.pop()
        assert ordinary.body["ids"], ordinary.body
        assert_alike(canary.body, ordinary.body)
        rows = await fetch_all(net.coordinator, "SELECT info FROM checks")
        assert json.loads(rows[0]["info"])["canary"]  # it was a canary, though nothing in its pop said so
