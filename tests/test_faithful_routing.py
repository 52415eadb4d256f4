"""Routing by model baseline and by ControlNet map (issue 12): a ControlNet or TI job goes only to a node
that can run it on the baseline of the model it runs on, an annotated ControlNet job only to a node
that makes that type's map, and what no node can do on the requested models is refused at submit.

Real coordinator (both engines), real HTTP; nodes are simulated pops declaring different abilities.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from coordinator.storage.migrations import migration_scripts
from coordinator.storage.sqlite import SqliteDatabase
from tests.api_support import b64, generate, node, png, pop_job, requester, small
from tests.conftest import RunningCoordinator

SDXL, SD2, FLUX = "SDXL 1.0", "stable_diffusion_2.1", "Flux.1-Schnell fp8 (Compact)"
OURS = {"features": ["hires_fix", "tis"]}  # a node of ours: no SD 2.x ControlNet, no SDXL TIs


def controlnet(models: list[str] | None, control_type: str = "canny", **params: Any) -> dict[str, Any]:
    return {**small(models=models, control_type=control_type, **params), "source_image": b64(png())}


async def test_an_sdxl_controlnet_job_goes_only_to_a_node_that_allows_sdxl_controlnet(
    coordinator: RunningCoordinator,
) -> None:
    alice = await coordinator.create_account("alice", kudos=100)
    owner = await coordinator.create_account("owner")
    request_id = await generate(requester(coordinator, alice), controlnet([SDXL]))
    sd_only = node(coordinator, owner, "sd-only", models=[SDXL], extra={"allow_controlnet": True})
    skipped = await sd_only.pop()
    assert not skipped.body["ids"] and skipped.body["skipped"] == {"controlnet": 1}
    check = await requester(coordinator, alice).get(f"/v2/generate/check/{request_id}")
    assert check.body["is_possible"] is False and "ControlNet" in check.body["is_possible_reason"]
    sdxl = {"allow_controlnet": True, "allow_sdxl_controlnet": True}
    popped = await pop_job(node(coordinator, owner, "sdxl", models=[SDXL], extra=sdxl))
    assert popped.body["model"] == SDXL and popped.body["payload"]["control_type"] == "canny"


async def test_a_node_declares_its_models_baselines_and_is_sent_only_what_fits_them(
    coordinator: RunningCoordinator,
) -> None:
    """A name the reference does not know counts as SD 1.x unless the node says otherwise; the node's word
    decides what that node is sent, including for a request that names no model (run on its first)."""
    alice = await coordinator.create_account("alice", kudos=100)
    owner = await coordinator.create_account("owner")
    api = requester(coordinator, alice)
    await generate(api, controlnet(["tiny-sd"]))
    await generate(api, controlnet([]))
    await generate(api, {**small(tis=[{"name": "negfix"}])})
    xl_model = {"tiny-sd": "stable_diffusion_xl"}
    as_xl = {"allow_controlnet": True, "allow_lora": True, **OURS, "model_baselines": xl_model}
    xl = await node(coordinator, owner, "declared-xl", extra=as_xl).pop()
    assert not xl.body["ids"] and xl.body["skipped"] == {"controlnet": 2, "lora": 1}
    as_sd1 = {**as_xl, "model_baselines": {"tiny-sd": "stable_diffusion_1"}}
    able = node(coordinator, owner, "declared-sd1", extra=as_sd1)
    payloads = [(await pop_job(able)).body["payload"] for _ in range(3)]
    assert sorted(str(p.get("control_type") or p["tis"][0]["name"]) for p in payloads) == ["canny", "canny", "negfix"]


async def test_tis_on_sdxl_need_a_node_that_declares_sdxl_tis(coordinator: RunningCoordinator) -> None:
    alice = await coordinator.create_account("alice", kudos=100)
    owner = await coordinator.create_account("owner")
    await generate(requester(coordinator, alice), small(models=[SDXL], tis=[{"name": "negfix"}]))
    ours = await node(coordinator, owner, "ours", models=[SDXL], extra={"allow_lora": True, **OURS}).pop()
    assert not ours.body["ids"] and ours.body["skipped"] == {"lora": 1}
    declaring = {"allow_lora": True, "features": ["tis", "sdxl_tis"]}
    popped = await pop_job(node(coordinator, owner, "sdxl-tis", models=[SDXL], extra=declaring))
    assert popped.body["payload"]["tis"][0]["name"] == "negfix"


async def test_sd2_controlnet_goes_only_to_a_node_that_declares_it(coordinator: RunningCoordinator) -> None:
    alice = await coordinator.create_account("alice", kudos=100)
    owner = await coordinator.create_account("owner")
    await generate(requester(coordinator, alice), controlnet([SD2]))
    ours = await node(coordinator, owner, "ours", models=[SD2], extra={"allow_controlnet": True, **OURS}).pop()
    assert not ours.body["ids"] and ours.body["skipped"] == {"controlnet": 1}
    # An AI Horde worker (none of our extensions) runs ComfyUI's SD 2.x ControlNets.
    popped = await pop_job(node(coordinator, owner, "regen", models=[SD2], extra={"allow_controlnet": True}))
    assert popped.body["payload"]["control_type"] == "canny"


async def test_an_annotated_controlnet_job_goes_only_to_a_node_that_makes_that_map(
    coordinator: RunningCoordinator,
) -> None:
    """With image_is_control the source is the map, so any node with that type's ControlNet runs it;
    otherwise the node must also make the map (its `annotators`)."""
    alice = await coordinator.create_account("alice", kudos=100)
    owner = await coordinator.create_account("owner")
    api = requester(coordinator, alice)
    annotated = await generate(api, controlnet(["tiny-sd"], "depth"))
    as_map = await generate(api, controlnet(["tiny-sd"], "depth", image_is_control=True))
    maps_only = {"allow_controlnet": True, "control_types": ["canny", "depth"], "annotators": ["canny"]}
    ours = node(coordinator, owner, "ours", extra=maps_only)
    popped = await pop_job(ours)
    assert popped.body["payload"]["image_is_control"] is True  # the later request: the earlier one is not its
    skipped = await ours.pop()
    assert not skipped.body["ids"] and skipped.body["skipped"] == {"controlnet": 1}
    check = await api.get(f"/v2/generate/check/{annotated}")
    assert check.body["is_possible"] is False and "map" in check.body["is_possible_reason"]
    annotating = {**maps_only, "annotators": ["canny", "depth"]}
    last = await pop_job(node(coordinator, owner, "annotating", extra=annotating))
    assert last.body["payload"]["control_type"] == "depth" and not last.body["payload"]["image_is_control"]
    assert (await api.get(f"/v2/generate/check/{as_map}")).body["processing"] == 1


@pytest.mark.parametrize(
    ("body", "status", "rc"),
    [
        (controlnet([SD2], "normal"), 400, "ControlNetUnsupported"),
        (controlnet([SD2, "tiny-sd"], "hough"), 400, "ControlNetUnsupported"),
        (controlnet([FLUX]), 400, "ControlNetMismatch"),
        (small(models=[FLUX], tis=[{"name": "negfix"}]), 400, "UnsupportedParameter"),
    ],
)
async def test_what_no_node_does_on_the_requested_baselines_is_refused_at_submit(
    coordinator: RunningCoordinator, body: dict[str, Any], status: int, rc: str
) -> None:
    alice = await coordinator.create_account("alice", kudos=100)
    api = requester(coordinator, alice)
    reply = await api.post("/v2/generate/async", body)
    assert (reply.status, reply.body["rc"]) == (status, rc), reply.body
    assert (await api.get("/v2/find_user")).body["kudos"] == 100  # refused before it cost anything
    # The same on a model that takes it is accepted.
    assert (await api.post("/v2/generate/async", {**body, "models": [SDXL]})).status == 202


async def test_the_migration_fills_the_maps_of_controlnet_jobs_queued_before_it(tmp_path: Path) -> None:
    """A queue from before migration 013: a ControlNet job needs its type's map made unless its request
    sent the map (image_is_control)."""
    path = tmp_path / "old.db"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY)")
    for version, script in migration_scripts("sqlite"):
        if version < 13:
            connection.executescript(f"BEGIN;\n{script}\nINSERT INTO schema_version VALUES ({version});\nCOMMIT;")
    for name, as_map in (("made", False), ("sent", True)):
        body = {"prompt": "x", "params": {"control_type": "depth", "image_is_control": as_map}}
        connection.execute(
            "INSERT INTO requests (id, account_id, created, updated, state, info) VALUES (?, 1, 0, 0, 'active', ?)",
            (name, json.dumps({"body": body})),
        )
        connection.execute(
            "INSERT INTO queue (job_id, request_id, model, tier, rank, pixels, steps, nsfw, img2img, painting, lora, "
            "post_processing, trusted_only, named, worker_blacklist, controlnet, control_type) VALUES (?, ?, '', 1, 0, "
            "4096, 4, 0, 1, 0, 0, 0, 0, 0, 0, 1, 'depth')",
            (f"j-{name}", name),
        )
    connection.commit()
    connection.close()
    database = SqliteDatabase(path)
    await database.open()
    try:
        async with database.reader() as tx:
            rows = await tx.queue_head(10)
    finally:
        await database.close()
    assert {row["request_id"]: row["annotator"] for row in rows} == {"made": "depth", "sent": ""}
