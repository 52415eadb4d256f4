"""Request flags that no image depends on, and face fixers (issue 12): each is honoured, refused with a
clear rc before it costs anything, or routed only to nodes that declare it; none is accepted and dropped.
Real coordinator (both engines), real HTTP; nodes are simulated pops."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api_support import generate, node, pop_job, requester, small
from tests.conftest import RunningCoordinator


@pytest.mark.parametrize("flag", ["shared", "validated_backends"])
async def test_a_promise_this_network_cannot_keep_is_refused_before_it_costs_anything(
    coordinator: RunningCoordinator, flag: str
) -> None:
    """`shared: true` asks for the images to go to LAION's dataset, `validated_backends: true` for a backend
    vetted by someone: nobody here does either. `false` (or leaving them out) asks for nothing."""
    alice = await coordinator.create_account("alice", kudos=100)
    api = requester(coordinator, alice)
    refused = await api.post("/v2/generate/async", {**small(), flag: True})
    assert (refused.status, refused.body["rc"]) == (400, "UnsupportedParameter"), refused.body
    assert flag in refused.body["message"]
    assert (await api.get("/v2/find_user")).body["kudos"] == 100
    request_id = await generate(api, {**small(), flag: False})
    status = await api.get(f"/v2/generate/status/{request_id}")
    assert status.body["shared"] is False  # what the status reports is what happened: nothing was shared


@pytest.mark.parametrize("replacement_filter", [True, False])
async def test_a_prompt_reaches_the_node_as_sent_whatever_the_replacement_filter(
    coordinator: RunningCoordinator, replacement_filter: bool
) -> None:
    """AI Horde's filter chooses between sanitizing and refusing a prompt its word list flags; this
    coordinator does neither, so with either value the node gets the prompt exactly as sent."""
    alice = await coordinator.create_account("alice", kudos=100)
    owner = await coordinator.create_account("owner")
    prompt = "a young witch, loli-pop candy, schoolgirl uniform ### blurry"
    body = {**small(prompt=prompt), "replacement_filter": replacement_filter}
    await generate(requester(coordinator, alice), body)
    popped = await pop_job(node(coordinator, owner, "n1"))
    assert popped.body["payload"]["prompt"] == prompt


@pytest.mark.parametrize("fixer", ["GFPGAN", "CodeFormers"])
async def test_face_fixers_go_only_to_nodes_that_declare_them(coordinator: RunningCoordinator, fixer: str) -> None:
    """A node with upscalers only (ours without GFPGAN's weights; never CodeFormers) does not get the job; one
    that declares the face fixer (an AI Horde worker, or ours with GFPGAN.pth) takes it, with its strength."""
    alice = await coordinator.create_account("alice", kudos=100)
    owner = await coordinator.create_account("owner")
    params: dict[str, Any] = {"post_processing": [fixer], "facefixer_strength": 0.3}
    request_id = await generate(requester(coordinator, alice), small(**params))
    ours = {"features": ["hires_fix"], "post_processors": ["RealESRGAN_x2plus", "RealESRGAN_x4plus"]}
    skipped = await node(coordinator, owner, "ours", extra=ours).pop()
    assert not skipped.body["ids"] and skipped.body["skipped"] == {"post-processing": 1}
    check = await requester(coordinator, alice).get(f"/v2/generate/check/{request_id}")
    assert check.body["is_possible"] is False and "post-processors" in check.body["is_possible_reason"]
    popped = await pop_job(node(coordinator, owner, "regen"))
    assert popped.body["payload"]["post_processing"] == [fixer]
    assert popped.body["payload"]["facefixer_strength"] == 0.3
