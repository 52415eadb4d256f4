"""Bad input is answered with its own `rc` and a 4xx, never a 500, and changes nothing."""

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from coordinator.config import RateLimit
from protocol.jobs import MAX_LONG_POLL_SECONDS
from tests.api_support import (
    RequesterAndNode,
    b64,
    count,
    custom_coordinator,
    fetch_one,
    generate,
    node,
    png,
    raw_call,
    requester,
    small,
    snapshot,
)
from tests.conftest import RunningCoordinator
from tests.helpers import Api

BAD_GENERATIONS: list[tuple[Any, int, str]] = [
    (b"{not json", 400, "InvalidJSON"),
    (b"\xff\xfe\x00", 400, "InvalidJSON"),
    (b"[1, 2, 3]", 400, "ValidationError"),
    (b'"a string"', 400, "ValidationError"),
    (b"null", 400, "ValidationError"),
    ({}, 400, "MissingPrompt"),
    ({"prompt": ""}, 400, "MissingPrompt"),
    ({"prompt": 12}, 400, "MissingPrompt"),
    ({"prompt": "x", "params": "big"}, 400, "ValidationError"),
    ({"prompt": "x", "params": {"width": 65}}, 400, "InvalidSize"),
    ({"prompt": "x", "params": {"height": 32}}, 400, "InvalidSize"),
    ({"prompt": "x", "params": {"width": "wide"}}, 400, "InvalidSize"),
    ({"prompt": "x", "params": {"steps": 501}}, 400, "TooManySteps"),
    ({"prompt": "x", "params": {"steps": 0}}, 400, "TooManySteps"),
    ({"prompt": "x", "params": {"n": 21}}, 400, "ValidationError"),
    ({"prompt": "x", "params": {"n": 0}}, 400, "ValidationError"),
    ({"prompt": "x", "params": {"cfg_scale": 101}}, 400, "ValidationError"),
    ({"prompt": "x", "params": {"cfg_scale": "high"}}, 400, "ValidationError"),
    ({"prompt": "x", "params": {"sampler_name": "k_magic"}}, 400, "ValidationError"),
    ({"prompt": "x", "params": {"loras": [{"name": ""}]}}, 400, "ValidationError"),
    ({"prompt": "x", "params": {"loras": "lora"}}, 400, "ValidationError"),
    ({"prompt": "x", "params": {"seed": 1.5}}, 400, "ValidationError"),
    ({"prompt": "x", "models": "tiny-sd"}, 400, "ValidationError"),
    ({"prompt": "x", "nsfw": "maybe"}, 400, "ValidationError"),
    ({"prompt": "x", "source_processing": "sideways"}, 400, "ValidationError"),
    ({"prompt": "x", "source_image": "@@@ not base64 @@@"}, 400, "SourceImageUnreadable"),
    ({"prompt": "x", "source_image": b64(b"plain text, not an image")}, 400, "SourceImageUnreadable"),
    ({"prompt": "x", "source_image": b64(png()), "source_mask": "%%%"}, 400, "SourceImageUnreadable"),
    ({"prompt": "x", "source_image": b64(png()), "source_processing": "inpainting"}, 400, "InpaintingMissingMask"),
    ({"prompt": "x", "source_image": b64(png()), "source_processing": "outpainting"}, 400, "InpaintingMissingMask"),
    ({"prompt": "x" * 20001}, 400, "MissingPrompt"),
]


@pytest.mark.parametrize(("body", "status", "rc"), BAD_GENERATIONS, ids=[str(i) for i in range(len(BAD_GENERATIONS))])
async def test_bad_generation_requests(coordinator: RunningCoordinator, body: Any, status: int, rc: str) -> None:
    alice = await coordinator.create_account("alice", kudos=100)
    before = await snapshot(coordinator)
    reply = await requester(coordinator, alice).post("/v2/generate/async", body)
    assert (reply.status, reply.rc) == (status, rc), reply.body
    assert isinstance(reply.body["message"], str) and reply.body["message"]
    assert await snapshot(coordinator) == before


async def test_validation_errors_name_the_field(coordinator: RunningCoordinator) -> None:
    reply = await Api(coordinator.url).post("/v2/generate/async", {"prompt": "x", "params": {"width": 65}})
    assert "params.width" in reply.body["errors"]


async def test_edge_values_are_accepted(coordinator: RunningCoordinator) -> None:
    alice = await coordinator.create_account("alice", kudos=10000)
    api = requester(coordinator, alice)
    for body in (
        {"prompt": "x", "params": {"width": 64, "height": 64, "steps": 1, "n": 20, "cfg_scale": 0}},
        {"prompt": "x", "params": {"steps": 500, "cfg_scale": 100}},
        {"prompt": "x", "params": {"seed": 12345, "n": None, "steps": None}},
        {"prompt": "x", "params": {"seed": "²"}},
        {"prompt": "x", "params": {"seed": "-17"}},
        {"prompt": "x", "params": {"seed": "99999999999999999999999999999"}},
        {"prompt": "x", "params": {"ddim_steps": 10, "n_iter": 2}},
        {"prompt": "x", "source_image": b64(png(mode="RGBA")), "source_processing": "inpainting"},
        {"prompt": "x", "source_image": b64(png()), "source_mask": b64(png()), "source_processing": "inpainting"},
        {"prompt": "x", "source_image": "data:image/png;base64," + b64(png())},
    ):
        reply = await api.post("/v2/generate/async", body)
        assert reply.status == 202, (body, reply.body)


async def test_odd_seeds_reach_the_node_as_numbers(pair: RequesterAndNode) -> None:
    api, worker = pair.api, pair.worker
    for seed in ("²", "١٢٣", "hello"):
        await generate(api, small(seed=seed))
        popped = await worker.pop()
        assert popped.status == 200, popped.body
        assert popped.body["payload"]["seed"].isascii() and popped.body["payload"]["seed"].isdigit()


async def test_unknown_fields_are_ignored(coordinator: RunningCoordinator, pair: RequesterAndNode) -> None:
    api, owner = pair.api, pair.owner
    body = {
        **small(),
        "flux_capacitor": True,
        "params": {**small()["params"], "extra_thing": [1, 2]},
        "replacement_filter": True,
    }  # proxied_account is refused by name (tests/test_capabilities.py)
    reply = await api.post("/v2/generate/async", body)
    assert reply.status == 202, reply.body
    popped = await node(coordinator, owner, "n1", extra={"unknown_pop_field": 1}).pop()
    assert popped.body["ids"] and "extra_thing" not in popped.body["payload"]


async def test_text_that_cannot_be_utf8_is_refused(coordinator: RunningCoordinator, pair: RequesterAndNode) -> None:
    """A lone surrogate escape is valid JSON but no valid text: refuse it, don't let it jam the queue."""
    api, owner = pair.api, pair.owner
    before = await snapshot(coordinator)
    reply = await api.post("/v2/generate/async", b'{"prompt": "a cat \\ud800", "models": ["tiny-sd"]}')
    assert reply.status == 400, reply.body
    assert await snapshot(coordinator) == before
    popped = await node(coordinator, owner, "n1").pop()
    assert popped.status == 200


@pytest.mark.parametrize("header", ["Client-Agent", "client_agent"])
async def test_client_agent_headers(coordinator: RunningCoordinator, header: str) -> None:
    alice = await coordinator.create_account("alice", kudos=100)
    reply = await requester(coordinator, alice).post(
        "/v2/generate/async", small(), headers={header: "my-app:1.2:me@example.org"}
    )
    assert reply.status == 202
    request_id = reply.body["id"]
    stored = (await coordinator.broker.requests.load(request_id))[0]
    assert stored.client_agent == "my-app:1.2:me@example.org"


async def test_invalid_apikey_is_401_everywhere(coordinator: RunningCoordinator) -> None:
    bad = Api(coordinator.url, apikey="not-a-real-key")
    before = await snapshot(coordinator)
    for method, path, body in (
        ("POST", "/v2/generate/async", small()),
        ("POST", "/v2/generate/pop", {"name": "n1", "models": ["tiny-sd"]}),
        ("POST", "/v2/generate/submit", {"id": "x", "generation": ""}),
        ("POST", "/v2/kudos/transfer", {"username": "x", "amount": 1}),
        ("GET", "/v2/find_user", None),
    ):
        reply = await bad.call(method, path, body)
        assert (reply.status, reply.rc) == (401, "InvalidAPIKey"), (path, reply.body)
    assert await snapshot(coordinator) == before


async def test_anonymous_nodes_are_refused(coordinator: RunningCoordinator) -> None:
    alice = await coordinator.create_account("alice", kudos=100)
    await generate(requester(coordinator, alice), small())
    before = await snapshot(coordinator)
    for apikey in (None, "0000000000"):
        api = Api(coordinator.url, apikey=apikey)
        popped = await api.post("/v2/generate/pop", {"name": "anon-node", "models": ["tiny-sd"]})
        assert (popped.status, popped.rc) == (403, "AnonForbiddenWorker")
        submitted = await api.post("/v2/generate/submit", {"id": "x", "generation": ""})
        assert submitted.status == 403
    assert await snapshot(coordinator) == before


BAD_POPS: list[tuple[Any, str]] = [
    (b"{oops", "InvalidJSON"),
    ({}, "ValidationError"),
    ({"name": ""}, "ValidationError"),
    ({"name": "n", "max_pixels": 10}, "ValidationError"),
    ({"name": "n", "amount": 21}, "ValidationError"),
    ({"name": "n", "wait": MAX_LONG_POLL_SECONDS + 1}, "ValidationError"),
    ({"name": "n", "models": "tiny-sd"}, "ValidationError"),
    ({"name": "n", "threads": 0}, "ValidationError"),
]


@pytest.mark.parametrize(("body", "rc"), BAD_POPS, ids=[str(i) for i in range(len(BAD_POPS))])
async def test_bad_pops(coordinator: RunningCoordinator, body: Any, rc: str) -> None:
    alice = await coordinator.create_account("alice", kudos=100)
    await generate(requester(coordinator, alice), small())
    owner = await coordinator.create_account("owner")
    before = await snapshot(coordinator)
    reply = await Api(coordinator.url, apikey=owner.apikey).post("/v2/generate/pop", body)
    assert (reply.status, reply.rc) == (400, rc), reply.body
    assert await snapshot(coordinator) == before


async def test_huge_max_pixels_is_capped_not_a_crash(coordinator: RunningCoordinator) -> None:
    alice = await coordinator.create_account("alice", kudos=100)
    await generate(requester(coordinator, alice), small(width=1024, height=1024))
    owner = await coordinator.create_account("owner")
    popped = await node(coordinator, owner, "n1", max_pixels=10**40).pop()
    assert popped.status == 200, popped.body
    assert popped.body["ids"]
    [worker] = (await Api(coordinator.url).get("/v2/workers")).body
    assert worker["max_pixels"] == 2**31 - 1


async def test_bad_submits(coordinator: RunningCoordinator) -> None:
    alice = await coordinator.create_account("alice", kudos=100)
    await generate(requester(coordinator, alice), small())
    owner = await coordinator.create_account("owner")
    worker = node(coordinator, owner, "n1", signed=False)
    popped = await worker.pop()
    job_id = popped.body["ids"][0]
    for body, rc in (
        ({"id": job_id, "generation": "%%%not base64", "state": "ok", "seed": "1"}, "ImageValidationFailed"),
        ({"id": job_id, "generation": b64(b"no image here"), "state": "ok", "seed": "1"}, "ImageValidationFailed"),
        ({"id": job_id, "generation": "", "state": "ok", "seed": "1"}, "ImageValidationFailed"),
        ({"id": job_id, "generation": b64(png()), "state": "exploded", "seed": "1"}, "ValidationError"),
        ({"id": job_id, "generation": b64(png()), "seed": {"a": 1}}, "ValidationError"),
        ({"generation": b64(png())}, "ValidationError"),
    ):
        reply = await worker.api.post("/v2/generate/submit", body)
        assert (reply.status, reply.rc) == (400, rc), (body.get("state"), reply.body)
    row = await fetch_one(coordinator, "SELECT state FROM jobs WHERE id = ?", job_id)
    assert row["state"] == "processing"
    assert (await coordinator.account(owner.id)).kudos == 0


async def test_bad_query_values_and_ids(coordinator: RunningCoordinator) -> None:
    alice = await coordinator.create_account("alice", kudos=100)
    api = requester(coordinator, alice)
    request_id = await generate(api, small())
    for path, status, rc in (
        (f"/v2/generate/check/{request_id}?wait=abc", 400, "ValidationError"),
        (f"/v2/generate/check/{request_id}?wait={MAX_LONG_POLL_SECONDS + 1}", 400, "ValidationError"),
        (f"/v2/generate/check/{request_id}?wait=-1", 400, "ValidationError"),
        (f"/v2/generate/check/{request_id}?wait=nan", 400, "ValidationError"),
        ("/v2/ledger?after=abc", 400, "ValidationError"),
        ("/v2/ledger?limit=-4", 400, "ValidationError"),
        ("/v2/users/abc", 400, "ValidationError"),
        ("/v2/users/99999999999999999999999999", 404, "UserNotFound"),
        ("/v2/users/²", 400, "ValidationError"),
        ("/v2/workers/no-such-worker", 404, "WorkerNotFound"),
        ("/v2/images/no-such-image.webp", 404, "NotFound"),
        ("/v2/images/..%2Fhorde.db", 404, "NotFound"),
        ("/v2/images/.hidden", 404, "NotFound"),
        ("/v2/sources/nothing.src", 404, "NotFound"),
        ("/v2/no/such/route", 404, "NotFound"),
    ):
        reply = await api.get(path)
        assert (reply.status, reply.rc) == (status, rc), (path, reply.body)
    quick = await api.get(f"/v2/generate/check/{request_id}?wait=0.1&finished=²")
    assert quick.status == 200, quick.body  # an unusable `finished` is ignored, as a missing one is
    wrong_method = await api.call("PATCH", "/v2/generate/async", small())
    assert (wrong_method.status, wrong_method.rc) == (405, "MethodNotAllowed")


async def test_oversized_body_is_413(tmp_path: Path, database_url: str | None) -> None:
    async with custom_coordinator(tmp_path, database_url, max_body_bytes=4096) as coordinator:
        alice = await coordinator.create_account("alice", kudos=100)
        before = await snapshot(coordinator)
        big = {"prompt": "x" * 5000, "models": ["tiny-sd"]}
        reply = await requester(coordinator, alice).post("/v2/generate/async", big)
        assert (reply.status, reply.rc) == (413, "BodyTooLarge")
        signed = await raw_call(
            coordinator,
            "POST",
            "/v2/kudos/transfer",
            b"{" + b" " * 8000 + b"}",
            {"apikey": alice.apikey, "Content-Type": "application/json"},
        )
        assert (signed.status, signed.rc) == (413, "BodyTooLarge")
        assert await snapshot(coordinator) == before
        assert (await requester(coordinator, alice).post("/v2/generate/async", small())).status == 202


async def test_rate_limited_generate_is_429(tmp_path: Path, database_url: str | None) -> None:
    limits = {"generate": RateLimit(rate=0.001, burst=2)}
    async with custom_coordinator(tmp_path, database_url, rate_limiting=True, rate_limits=limits) as coordinator:
        alice = await coordinator.create_account("alice", kudos=100)
        bob = await coordinator.create_account("bob", kudos=100)
        api = requester(coordinator, alice)
        assert (await api.post("/v2/generate/async", small())).status == 202
        assert (await api.post("/v2/generate/async", small())).status == 202
        before = await count(coordinator, "requests")
        limited = await api.post("/v2/generate/async", small())
        assert (limited.status, limited.rc) == (429, "RateLimited")
        assert await count(coordinator, "requests") == before
        # The limit is per account: another requester is not affected.
        assert (await requester(coordinator, bob).post("/v2/generate/async", small())).status == 202


async def test_upload_of_garbage_and_of_nothing(coordinator: RunningCoordinator, pair: RequesterAndNode) -> None:
    api, owner = pair.api, pair.owner
    await generate(api, small())
    popped = await node(coordinator, owner, "n1").pop()
    url = popped.body["r2_upload"]
    async with aiohttp.ClientSession() as session:
        for data, rc in ((b"", "ImageValidationFailed"), (b"\x00" * 100, "ImageValidationFailed")):
            async with session.put(url, data=data) as response:
                assert response.status == 400
                assert (await response.json())["rc"] == rc
        async with session.put(url.split("/upload/")[0] + "/upload/unknown-job?token=1.x", data=png()) as response:
            assert response.status == 403


async def test_registration_limits(tmp_path: Path, database_url: str | None) -> None:
    async with custom_coordinator(
        tmp_path, database_url, rate_limiting=True, registration_limit=RateLimit(rate=0.001, burst=2)
    ) as coordinator:
        api = Api(coordinator.url)
        assert (await api.post("/v2/accounts", {"username": "one"})).status == 200
        assert (await api.post("/v2/accounts", {"username": "two"})).status == 200
        limited = await api.post("/v2/accounts", {"username": "three"})
        assert (limited.status, limited.rc) == (429, "RateLimited")
        assert await count(coordinator, "accounts") == 2
    async with custom_coordinator(tmp_path / "closed", database_url, open_registration=False) as coordinator:
        before = await count(coordinator, "accounts")
        closed = await Api(coordinator.url).post("/v2/accounts", {"username": "four"})
        assert (closed.status, closed.rc) == (403, "RegistrationClosed")
        assert await count(coordinator, "accounts") == before
