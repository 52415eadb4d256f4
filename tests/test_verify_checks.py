"""Spot checks end to end (issue 17): every kind of cheater is caught and loses its held kudos, honest nodes of
two hardware classes (float32 and bfloat16 on the CPU) are never penalised, and a check is, to the node
that runs it, an ordinary job. Real coordinator, real HTTP, real signatures, real tiny-pipeline inference;
every image is checked (rate 1) so each path runs on purpose, and nothing waits on a timer."""

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from coordinator.config import VerificationSettings
from tests import conftest
from tests.api_support import custom_coordinator, fetch_all, generate, ledger_rows, node, requester, small
from tests.conftest import RunningCoordinator
from tests.helpers import Api
from tests.verify_support import CHEATS, TinyNode, tiny_generator

pytestmark = pytest.mark.usefixtures("one_torch_thread")
WINDOW = 3600.0
ALWAYS = VerificationSettings(enabled=True, window=WINDOW, new_rate=1.0, settled_rate=1.0, suspect_rate=1.0)
BODY = small(steps=8, seed="1234")


@dataclass
class Network:
    coordinator: RunningCoordinator
    payer: Api
    owners: dict[str, conftest.TestAccount]
    nodes: dict[str, TinyNode]

    async def serve(self, *names: str) -> None:
        """Each named node in turn pops and answers one job, which must be there."""
        for name in names:
            reply = await self.nodes[name].serve_one()
            assert reply is not None and reply.status == 200, (name, reply)

    async def verdicts(self) -> dict[str, list[str]]:
        rows = await fetch_all(
            self.coordinator,
            "SELECT w.name, v.outcome FROM verdicts v JOIN workers w ON w.id = v.worker_id ORDER BY v.id",
        )
        found: dict[str, list[str]] = {}
        for row in rows:
            found.setdefault(row["name"], []).append(row["outcome"])
        return found

    async def held(self, name: str) -> tuple[float, float]:
        reply = await Api(self.coordinator.url, apikey=self.owners[name].apikey).get("/v2/find_user")
        return reply.body["kudos"], reply.body["held_kudos"]


@asynccontextmanager
async def network(
    tmp_path: Path, database_url: str | None, tiny_model_dir: Path, cheat: str | None = None,
    settings: VerificationSettings = ALWAYS, **cheater: Any,
) -> AsyncIterator[Network]:  # fmt: skip
    """Honest nodes `f32` (float32) and `bf16` (bfloat16), and `cheater` (float32) cheating as told; one owner each."""
    async with custom_coordinator(tmp_path, database_url, verification=settings) as coordinator:
        payer = requester(coordinator, await coordinator.create_account("payer", kudos=1000))
        owners = {name: await coordinator.create_account(f"owner-{name}") for name in ("f32", "bf16", "cheater")}
        f32, bf16 = tiny_generator(tiny_model_dir, torch.float32), tiny_generator(tiny_model_dir, torch.bfloat16)
        nodes = {
            "f32": TinyNode.of(node(coordinator, owners["f32"], "f32"), f32, torch.float32),
            "bf16": TinyNode.of(node(coordinator, owners["bf16"], "bf16"), bf16, torch.bfloat16),
            "cheater": TinyNode.of(node(coordinator, owners["cheater"], "cheater"), f32, torch.float32,
                                   cheat=cheat, **cheater),
        }  # fmt: skip
        yield Network(coordinator, payer, owners, nodes)


async def audit_ok(coordinator: RunningCoordinator) -> None:
    report = await coordinator.broker.bank.audit()
    assert report.ok, report.problems


@pytest.mark.parametrize("cheat", CHEATS)
async def test_each_cheater_is_caught_and_forfeits(
    tmp_path: Path, database_url: str | None, tiny_model_dir: Path, cheat: str
) -> None:
    async with network(tmp_path, database_url, tiny_model_dir, cheat) as net:
        await generate(net.payer, BODY)
        await net.serve("cheater")  # its image is held...
        assert (await net.held("cheater"))[1] > 0
        await net.serve("f32")  # ...and checked by another owner's node, which disagrees...
        await net.serve("bf16")  # ...so a third owner's node, of another class, decides
        assert await net.verdicts() == {"cheater": ["fail"], "f32": ["pass"], "bf16": ["pass"]}
        assert await net.held("cheater") == (0.0, 0.0)  # forfeited, never released
        forfeits = [row for row in await ledger_rows(net.coordinator) if row["kind"] == "forfeit"]
        assert len(forfeits) == 1 and ":verdict:" in forfeits[0]["reference"] and forfeits[0]["target"] is None
        net.coordinator.broker.services.clock = lambda: __import__("time").time() + WINDOW + 1
        await net.coordinator.broker.upkeep.release_escrow()
        assert await net.held("cheater") == (0.0, 0.0)
        assert (await net.held("f32"))[0] > 0 and (await net.held("bf16"))[0] > 0  # the checks were paid
        await audit_ok(net.coordinator)


async def test_honest_nodes_of_two_classes_are_never_penalised(
    tmp_path: Path, database_url: str | None, tiny_model_dir: Path
) -> None:
    async with network(tmp_path, database_url, tiny_model_dir) as net:
        for seed, (first, second) in enumerate([("f32", "bf16"), ("bf16", "f32"), ("cheater", "bf16")]):
            await generate(net.payer, small(steps=8, seed=str(seed)))  # `cheater` is honest here
            await net.serve(first, second)  # the image, then its check: they agree across classes
        assert await net.verdicts() == {"f32": ["pass"] * 2, "bf16": ["pass"] * 3, "cheater": ["pass"]}
        assert not [row for row in await ledger_rows(net.coordinator) if row["kind"] == "forfeit"]
        earned = {name: (await net.held(name))[1] for name in net.nodes}
        net.coordinator.broker.services.clock = lambda: __import__("time").time() + WINDOW + 1
        await net.coordinator.broker.upkeep.release_escrow()
        assert {name: await net.held(name) for name in net.nodes} == {n: (v, 0.0) for n, v in earned.items()}
        await audit_ok(net.coordinator)


async def test_a_node_cheating_on_one_job_loses_its_whole_window_and_is_suspended(
    tmp_path: Path, database_url: str | None, tiny_model_dir: Path
) -> None:
    settings = VerificationSettings(enabled=True, window=WINDOW, new_rate=1.0, settled_rate=1.0, suspect_rate=1.0,
                                    failures_to_suspend=2)  # fmt: skip
    async with network(tmp_path, database_url, tiny_model_dir, "seed", settings, on_jobs={1, 2}) as net:
        await generate(net.payer, small(steps=8, seed="10"))
        await net.serve("cheater", "f32")  # job 0: honest, checked, passes
        held_before = (await net.held("cheater"))[1]
        assert held_before > 0
        await generate(net.payer, small(steps=8, seed="11"))
        await net.serve("cheater", "f32", "bf16")  # job 1: another seed's image; caught
        assert (await net.verdicts())["cheater"] == ["pass", "fail"]
        assert await net.held("cheater") == (0.0, 0.0)  # the honest job's reward went with it: the whole window
        await generate(net.payer, small(steps=8, seed="12"))
        await net.serve("cheater", "f32", "bf16")  # job 2: caught again, and suspended
        refused = await net.nodes["cheater"].worker.pop()
        assert refused.status == 403 and refused.rc == "WorkerMaintenance", refused.body
        assert "spot checks" in refused.body["message"] and "forfeited" in refused.body["message"]
        await audit_ok(net.coordinator)


async def test_a_check_looks_like_any_job_to_its_node(
    tmp_path: Path, database_url: str | None, tiny_model_dir: Path
) -> None:
    async with network(tmp_path, database_url, tiny_model_dir) as net:
        await generate(net.payer, small(steps=8))  # a random seed
        await net.serve("cheater")  # honest here: its image gets a check, queued for another owner
        check = await net.nodes["f32"].worker.pop()
        subject = await fetch_all(
            net.coordinator, "SELECT j.info FROM jobs j JOIN workers w ON w.id = j.worker_id WHERE w.name = 'cheater'"
        )
        seed = json.loads(subject[0]["info"])["job_document"]["payload"]["seed"]
        assert check.body["payload"]["seed"] == seed  # the same image is asked for again
        other = requester(net.coordinator, await net.coordinator.create_account("other", kudos=100))
        await generate(other, small(steps=8, seed=seed))  # the very same request, made by an ordinary requester
        ordinary = await net.nodes["bf16"].worker.pop()
        assert check.status == ordinary.status == 200 and check.body["ids"] and ordinary.body["ids"]
        assert_alike(check.body, ordinary.body)


# Fields whose values differ between any two jobs (ids, digests, URLs naming them, times, the node's own id
# and signatures); everything else must be equal, and every field present in both.
PER_JOB = {"id", "ids", "r2_upload", "r2_uploads", "job_id", "request_sha256", "issued_at", "worker_id",
           "signature"}  # fmt: skip


def assert_alike(a: Any, b: Any, path: str = "") -> None:
    assert type(a) is type(b), path
    if isinstance(a, dict):
        assert a.keys() == b.keys(), (path, a.keys() ^ b.keys())
        for key in a:
            if key not in PER_JOB:
                assert_alike(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_alike(x, y, f"{path}[{index}]")
    else:
        assert a == b, (path, a, b)
