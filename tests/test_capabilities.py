"""Capability routing from one table (coordinator/capabilities.py, issue 12 item 2).

The pop query's SQL filters, the wake-up predicate and `skipped` all come from one table; the parity
test checks the SQL form against the Python form over random jobs and nodes on the real engines.
The routing tests run a real coordinator and pop over HTTP as nodes declaring different abilities.
"""

from __future__ import annotations

import json
import random
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from coordinator.capabilities import CAPABILITIES, model_allows, row_skip_reason
from coordinator.events import can_serve
from coordinator.storage.migrations import migration_scripts
from coordinator.storage.records import QueueEntry, WorkerCaps
from coordinator.storage.sqlite import SqliteDatabase
from protocol.baselines import FAMILIES
from tests.api_support import RequesterAndNode, b64, count, generate, node, png, pop_job, requester, small
from tests.conftest import RunningCoordinator

MODELS = ["m1", "m2", "m3"]
SAMPLERS = ["k_euler", "k_euler_a", "k_dpmpp_2m", "ddim"]
CONTROL_TYPES = ["", "", "canny", "depth", "scribble"]


def random_entry(rng: random.Random, index: int) -> QueueEntry:
    demands: dict[str, Any] = {}
    for capability in CAPABILITIES:
        if capability.kind == "flag":
            demands[capability.column] = rng.random() < 0.3
        elif capability.column == "pixels":
            demands["pixels"] = rng.choice([64, 512, 1024]) ** 2
        elif capability.column == "steps":
            demands["steps"] = rng.choice([4, 30, 31, 100])
        elif capability.column == "post_processors":
            demands["post_processors"] = rng.choice([0, 0, 1, 2, 3, 64, 65])
        elif capability.column in ("control_type", "annotator"):
            demands[capability.column] = rng.choice(CONTROL_TYPES)
        else:
            demands[capability.column] = rng.choice(SAMPLERS)
    models = rng.sample(MODELS, rng.randint(0, 2))
    return QueueEntry(
        job_id=f"j{index}", request_id=f"r{index}", models=models, tier=rng.randint(0, 1), rank=rng.random(), **demands
    )


def random_caps(rng: random.Random, index: int) -> WorkerCaps:
    flags = {c.node: rng.random() < 0.6 for c in CAPABILITIES if c.kind == "flag"}
    samplers = None if rng.random() < 0.3 else frozenset(rng.sample(SAMPLERS, rng.randint(0, len(SAMPLERS))))
    controls = None if rng.random() < 0.3 else frozenset(rng.sample(CONTROL_TYPES[2:], rng.randint(0, 3)))
    annotators = None if rng.random() < 0.3 else frozenset(rng.sample(CONTROL_TYPES[2:], rng.randint(0, 3)))
    models = rng.sample(MODELS, rng.randint(0, 3))
    # Some models declared with a baseline, the others the reference's (m1..m3: SD 1.x by default).
    baselines = {model: rng.choice(FAMILIES) for model in models if rng.random() < 0.7}
    by_baseline = {name: rng.random() < 0.5 for name in ("sdxl_controlnet", "sd2_controlnet", "sdxl_tis")}
    return WorkerCaps(
        worker_id=f"w{index}",
        models=models,
        max_pixels=rng.choice([512, 1024, 2048]) ** 2,
        max_steps=rng.choice([30, 500]),
        samplers=samplers,
        post_processors=rng.choice([None, 0, 1, 3, 67]),
        control_types=controls,
        annotators=annotators,
        baselines=baselines,
        **by_baseline,
        **flags,
    )


async def test_sql_and_python_forms_of_the_table_agree(coordinator: RunningCoordinator) -> None:
    rng = random.Random(12)
    entries = [random_entry(rng, index) for index in range(300)]
    database = coordinator.broker.services.database
    async with database.transaction() as tx:
        await tx.enqueue(entries)
    async with database.reader() as tx:
        rows = await tx.queue_head(10_000)
    assert len(rows) == sum(max(1, len(entry.models)) for entry in entries)
    checked = 0
    for index in range(120):
        caps = random_caps(rng, index)
        async with database.reader() as tx:
            by_sql = {(row["job_id"], row["model"]) for row in await tx.queue_candidates(caps, 10_000)}
        by_python = {(row["job_id"], row["model"]) for row in rows if row_skip_reason(row, caps) is None}
        assert by_sql == by_python, caps
        # The wake-up predicate agrees too: a job wakes a node exactly when one of its rows is the node's.
        for entry in entries:
            servable = any(job_id == entry.job_id for job_id, _model in by_python)
            assert can_serve(caps, entry) == servable, (caps, entry)
        checked += len(by_sql)
    assert checked > 100  # the random mix lets many jobs through, and keeps many out


def test_each_row_keeps_out_exactly_what_the_node_lacks() -> None:
    """Flip one capability off: only the jobs demanding it change hands (no row leans on another)."""
    everything = WorkerCaps(
        worker_id="w",
        models=["m1"],
        max_pixels=2**22,
        nsfw=True,
        img2img=True,
        painting=True,
        lora=True,
        post_processing=True,
        trusted=True,
        tis=True,
        controlnet=True,
        hires_fix=True,
        censor=True,
    )
    plain = {c.column: 0 for c in CAPABILITIES} | {
        "pixels": 64 * 64,
        "steps": 4,
        "sampler": "k_euler",
        "model": "m1",
        "control_type": "",
        "annotator": "",
    }
    assert row_skip_reason(plain, everything) is None
    for capability in CAPABILITIES:
        if capability.kind != "flag":
            continue
        lacking = replace(everything, **{capability.node: False})
        assert row_skip_reason(plain, lacking) is None
        assert row_skip_reason({**plain, capability.column: 1}, lacking) == capability.skip
    assert row_skip_reason({**plain, "sampler": "ddim"}, replace(everything, samplers=frozenset({"k_euler"})))
    assert row_skip_reason({**plain, "steps": 31}, replace(everything, max_steps=30)) == "step_count"
    assert not model_allows(everything, "m2") and model_allows(everything, "")


async def test_a_controlnet_job_waits_for_a_node_that_declares_it(
    coordinator: RunningCoordinator, pair: RequesterAndNode
) -> None:
    api, owner = pair.api, pair.owner
    plain = node(coordinator, owner, "plain")
    empty = await plain.pop()  # online, but without ControlNet
    assert empty.status == 200 and not empty.body["ids"]
    body = {**small(control_type="canny"), "source_image": b64(png())}
    request_id = await generate(api, body)

    check = await api.get(f"/v2/generate/check/{request_id}")
    assert check.body["is_possible"] is False and "ControlNet" in check.body["is_possible_reason"]
    skipped = await plain.pop()
    assert not skipped.body["ids"] and skipped.body["skipped"] == {"controlnet": 1}

    able = node(coordinator, owner, "able", extra={"allow_controlnet": True})
    popped = await pop_job(able)
    assert popped.body["payload"]["control_type"] == "canny"
    assert not (await plain.pop()).body["ids"]  # never the plain node's


@pytest.mark.parametrize(
    ("params", "flags", "skip"),
    [
        ({"sampler_name": "k_dpmpp_2m"}, {"samplers": ["k_euler"]}, "bridge_version"),
        ({"steps": 31}, {"limit_max_steps": True}, "step_count"),
        ({"hires_fix": True}, {"features": []}, "bridge_version"),
        ({"tis": [{"name": "negfix"}]}, {"allow_lora": False}, "lora"),
        ({"loras": [{"name": "123", "is_version": True}]}, {"allow_lora": True, "features": []}, "lora"),
        ({"post_processing": ["GFPGAN"]}, {"allow_post_processing": False}, "post-processing"),
        (
            {"post_processing": ["RealESRGAN_x2plus", "GFPGAN"]},
            {"post_processors": ["RealESRGAN_x2plus"]},
            "post-processing",
        ),
    ],
)
async def test_a_job_goes_only_to_a_node_that_declares_what_it_needs(
    coordinator: RunningCoordinator, params: dict[str, Any], flags: dict[str, Any], skip: str
) -> None:
    alice = await coordinator.create_account("alice", kudos=100)
    owner = await coordinator.create_account("owner")
    await generate(requester(coordinator, alice), small(**params))
    lacking = await node(coordinator, owner, "lacking", extra=flags).pop()
    assert not lacking.body["ids"] and lacking.body["skipped"] == {skip: 1}
    # An AI Horde worker (none of our extensions, AI Horde's flags on) can do all of these.
    able = await pop_job(node(coordinator, owner, "able", extra={"allow_lora": True}))
    assert able.body["payload"]["ddim_steps"] == params.get("steps", 4)


async def test_a_controlnet_type_goes_only_to_a_node_that_runs_it(
    coordinator: RunningCoordinator, pair: RequesterAndNode
) -> None:
    api, owner = pair.api, pair.owner
    await generate(api, {**small(control_type="depth"), "source_image": b64(png())})
    canny_only = {"allow_controlnet": True, "control_types": ["canny", "scribble"]}
    lacking = await node(coordinator, owner, "canny-only", extra=canny_only).pop()
    assert not lacking.body["ids"] and lacking.body["skipped"] == {"controlnet": 1}
    able = await pop_job(
        node(coordinator, owner, "depth", extra={"allow_controlnet": True, "control_types": ["depth"]})
    )
    assert able.body["payload"]["control_type"] == "depth"


async def test_limit_max_steps_still_takes_jobs_within_the_limit(
    coordinator: RunningCoordinator, pair: RequesterAndNode
) -> None:
    api, owner = pair.api, pair.owner
    await generate(api, small(steps=30))
    popped = await pop_job(node(coordinator, owner, "limited", extra={"limit_max_steps": True}))
    assert popped.body["payload"]["ddim_steps"] == 30


REFUSED = [
    ({"workflow": "qr_code"}, {}, 400, "UnsupportedParameter"),
    ({"transparent": True}, {}, 400, "UnsupportedParameter"),
    ({"extra_texts": [{"text": "x", "reference": "abc"}]}, {}, 400, "UnsupportedParameter"),
    ({"special": {"a": 1}}, {}, 400, "UnsupportedParameter"),
    ({}, {"extra_source_images": [{"image": "aGk="}]}, 400, "UnsupportedParameter"),
    ({}, {"style": "epic"}, 404, "StyleNotFound"),
    ({}, {"allow_downgrade": True}, 400, "UnsupportedParameter"),
    ({}, {"proxied_account": "someone"}, 400, "UnsupportedParameter"),
    ({"control_type": "canny"}, {}, 400, "ControlNetSourceMissing"),
    ({"return_control_map": True}, {}, 400, "ValidationError"),
    ({"control_type": "not-a-type"}, {}, 400, "ValidationError"),
    ({"post_processing": ["NotAnUpscaler"]}, {}, 400, "ValidationError"),
]


@pytest.mark.parametrize(("params", "top", "status", "rc"), REFUSED)
async def test_what_no_node_honours_is_refused_before_it_costs_anything(
    coordinator: RunningCoordinator, params: dict[str, Any], top: dict[str, Any], status: int, rc: str
) -> None:
    alice = await coordinator.create_account("alice", kudos=100)
    reply = await requester(coordinator, alice).post("/v2/generate/async", {**small(**params), **top})
    assert reply.status == status and reply.body["rc"] == rc, reply.body
    assert reply.body["message"]
    assert await count(coordinator, "requests") == 0 and await count(coordinator, "queue") == 0
    assert (await coordinator.account(alice.id)).kudos == 100


async def test_disable_batching_gives_one_image_per_pop(pair: RequesterAndNode) -> None:
    api, worker = pair.api, pair.worker
    await generate(api, {**small(n=3), "disable_batching": True})
    assert [len((await pop_job(worker, amount=3)).body["ids"]) for _ in range(3)] == [1, 1, 1]
    await generate(api, small(n=3))
    assert len((await pop_job(worker, amount=3)).body["ids"]) == 3


async def test_extra_slow_workers_false_keeps_extra_slow_nodes_away(
    coordinator: RunningCoordinator, pair: RequesterAndNode
) -> None:
    api, owner = pair.api, pair.owner
    await generate(api, {**small(), "extra_slow_workers": False})
    slow = await node(coordinator, owner, "slow", extra={"extra_slow_worker": True}).pop()
    assert not slow.body["ids"]
    assert (await pop_job(node(coordinator, owner, "fast"))).body["ids"]


async def test_trusted_workers_go_only_to_trusted_nodes(coordinator: RunningCoordinator) -> None:
    alice = await coordinator.create_account("alice", kudos=100)
    owner = await coordinator.create_account("owner")
    await generate(requester(coordinator, alice), {**small(), "trusted_workers": True})
    untrusted = node(coordinator, owner, "untrusted")
    assert (await untrusted.pop()).body["skipped"] == {"untrusted": 1}
    trusted = node(coordinator, owner, "trusted")
    await trusted.pop()  # registers it
    async with coordinator.broker.services.database.transaction() as tx:  # an operator's `trust` command
        worker = await tx.worker_by("name", "trusted")
        assert worker is not None
        worker.trusted = True
        await tx.save_worker_state(worker)
    assert (await pop_job(trusted)).body["ids"]


async def test_the_migration_fills_the_demands_of_jobs_queued_before_it(tmp_path: Path) -> None:
    """A queue from before migration 008 gets each job's sampler, hires fix and censor from its request."""
    path = tmp_path / "old.db"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY)")
    for version, script in migration_scripts("sqlite"):
        if version < 8:
            connection.executescript(f"BEGIN;\n{script}\nINSERT INTO schema_version VALUES ({version});\nCOMMIT;")
    body = {"prompt": "x", "censor_nsfw": True, "params": {"sampler_name": "DDIM", "hires_fix": True}}
    connection.execute(
        "INSERT INTO requests (id, account_id, created, updated, state, info) VALUES ('r1', 1, 0, 0, 'active', ?)",
        (json.dumps({"body": body}),),
    )
    connection.execute(
        "INSERT INTO queue (job_id, request_id, model, tier, rank, pixels, steps, nsfw, img2img, painting, lora, "
        "post_processing, trusted_only, named, worker_blacklist) VALUES ('j1', 'r1', '', 1, 0, 4096, 4, 0, 0, 0, 0, "
        "0, 0, 0, 0)"
    )
    connection.commit()
    connection.close()
    database = SqliteDatabase(path)
    await database.open()
    try:
        async with database.reader() as tx:
            [row] = await tx.queue_head(10)
    finally:
        await database.close()
    assert (row["sampler"], row["hires_fix"], row["censor"], row["controlnet"]) == ("ddim", 1, 1, 0)
