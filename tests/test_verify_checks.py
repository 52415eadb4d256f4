"""Spot checks end to end (issue 17): every kind of cheater is caught and loses its held kudos, honest nodes of
two hardware classes (float32 and bfloat16 on the CPU) are never penalised, and a check is, to the node
that runs it, an ordinary job. Real coordinator, real HTTP, real signatures, real tiny-pipeline inference;
every image is checked (rate 1) so each path runs on purpose, and nothing waits on a timer."""

import json
from pathlib import Path
from typing import Any

import pytest

from coordinator.config import VerificationSettings
from tests.api_support import fetch_all, generate, ledger_rows, requester, small
from tests.verify_support import CHEATS, WINDOW, audit_ok, network

pytestmark = pytest.mark.usefixtures("one_torch_thread")
BODY = small(steps=8, seed="1234")


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
    settings = VerificationSettings(
        enabled=True, window=WINDOW, new_rate=1.0, settled_rate=1.0, suspect_rate=1.0, failures_to_suspend=2
    )
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
PER_JOB = {"id", "ids", "r2_upload", "r2_uploads", "job_id", "request_sha256", "issued_at", "worker_id", "signature"}


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
