"""AI Horde v2 shapes for strict clients (issue 13): our extension fields only on request, request ids
kept from nodes, and the endpoints AI Horde clients call beyond the image path."""

import json
from pathlib import Path
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy

from protocol.provenance import ResultDocument, request_digest, sign_result
from tests.api_support import (
    RequesterAndNode,
    b64,
    custom_coordinator,
    generate,
    node,
    png,
    pop_job,
    requester,
    small,
)
from tests.conftest import RunningCoordinator
from tests.helpers import Api, tiny_webp

PROVENANCE_FIELDS = {"worker_key", "signature", "image_sha256", "job", "job_signature"}


async def made(coordinator: RunningCoordinator, **body: Any) -> tuple[str, Api, Any]:
    """A request with one image made by a signed node; (request id, requester, the node)."""
    alice = await coordinator.create_account("alice", kudos=100)
    api = requester(coordinator, alice)
    request_id = await generate(api, small(**body))
    worker = node(coordinator, await coordinator.create_account("owner"), "n1")
    assert (await worker.serve_one()).status == 200
    return request_id, api, worker


async def test_provenance_fields_only_when_asked(coordinator: RunningCoordinator) -> None:
    request_id, api, worker = await made(coordinator)
    plain = Api(coordinator.url, provenance=False)
    status = await plain.get(f"/v2/generate/status/{request_id}")
    (generation,) = status.body["generations"]
    assert not PROVENANCE_FIELDS & set(generation), generation
    assert {"id", "img", "seed", "worker_id", "worker_name", "model", "state", "censored"} <= set(generation)
    for asked in (f"/v2/generate/status/{request_id}?provenance=1", f"/v2/generate/status/{request_id}"):
        headers = {} if "?" in asked else {"X-Horde-Provenance": "1"}
        (full,) = (await plain.get(asked, headers=headers)).body["generations"]
        assert PROVENANCE_FIELDS <= set(full) and full["job"]["request_sha256"] == request_digest(request_id)
        assert full["worker_key"] == worker.api.identity.public_key.text()
    worker_id = generation["worker_id"]
    details = (await plain.get(f"/v2/workers/{worker_id}")).body
    assert "public_key" not in details and "rewards_withheld" not in details
    assert (await plain.get(f"/v2/workers/{worker_id}?provenance=1")).body["public_key"] == details_key(worker)
    listed = (await plain.get("/v2/workers")).body
    assert [w["name"] for w in listed] == ["n1"] and "public_key" not in listed[0]
    me = (await Api(coordinator.url, apikey=api.apikey, provenance=False).get("/v2/find_user")).body
    assert "public_key" not in me and me["username"].startswith("alice#")


def details_key(worker: Any) -> str:
    return worker.api.identity.public_key.text()


async def test_pop_carries_signed_jobs_only_when_asked(coordinator: RunningCoordinator, pair: RequesterAndNode) -> None:
    api, owner = pair.api, pair.owner
    await generate(api, small(n=2))
    bare = node(coordinator, owner, "bare")
    bare.api.provenance = False
    first = await pop_job(bare)
    assert "jobs" not in first.body and len(first.body["ids"]) == 1
    second = await pop_job(node(coordinator, owner, "asks"))
    assert [job["document"]["job_id"] for job in second.body["jobs"]] == second.body["ids"]


async def recorded(method: str, url: str, sink: list[str], **kw: Any) -> tuple[int, bytes]:
    """Call `url` and keep every header and the body received."""
    async with aiohttp.ClientSession() as session, session.request(method, url, **kw) as response:
        body = await response.read()
        sink.append(headers_text(response.headers) + body.decode("latin-1"))
        return response.status, body


def headers_text(headers: CIMultiDictProxy[str]) -> str:
    return "\n".join(f"{key}: {value}" for key, value in headers.items())


async def test_no_request_id_reaches_a_node(coordinator: RunningCoordinator) -> None:
    """Everything a node receives, for an img2img job (pop, source, upload, submit, its own details,
    the status of its worker, an empty pop), holds neither the request id nor any part of it."""
    alice = await coordinator.create_account("alice", kudos=100)
    body = {**small(n=2), "source_image": b64(png()), "source_processing": "img2img"}
    request_id = await generate(requester(coordinator, alice), body)
    worker = node(coordinator, await coordinator.create_account("owner"), "n1")
    received: list[str] = []
    original_call = worker.api.call

    async def call(method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        reply = await original_call(method, path, body, headers)
        received.append(json.dumps(reply.body))
        return reply

    worker.api.call = call  # type: ignore[method-assign]
    popped = await pop_job(worker, amount=2)
    assert popped.body["source_image"], popped.body
    status, source = await recorded("GET", popped.body["source_image"], received)
    assert status == 200 and source
    for index, job_id in enumerate(popped.body["ids"]):
        upload = popped.body["r2_uploads"][index]
        await recorded("PUT", upload, received, data=tiny_webp())
        seed = popped.body["jobs"][index]["document"]["payload"]["seed"]
        assert (await worker.submit(job_id, seed, upload_url=None)).status == 200
    await worker.api.get(f"/v2/workers/{popped.body['jobs'][0]['document']['worker_id']}")
    await worker.api.get("/v2/find_user")
    await worker.pop()
    done = await requester(coordinator, alice).get(f"/v2/generate/status/{request_id}")
    assert done.body["done"] and len(done.body["generations"]) == 2  # the flow really ran
    everything = "\n".join(received)
    for part in (request_id, request_id.replace("-", ""), *request_id.split("-")):
        assert part not in everything, part
    assert popped.body["jobs"][0]["document"]["request_sha256"] == request_digest(request_id)


async def test_workers_by_name_and_type(coordinator: RunningCoordinator) -> None:
    owner = await coordinator.create_account("owner")
    for name in ("Alpha", "beta"):
        assert (await node(coordinator, owner, name).pop()).status == 200
    api = Api(coordinator.url)
    assert [w["name"] for w in (await api.get("/v2/workers?name=ALPHA")).body] == ["Alpha"]
    assert (await api.get("/v2/workers?name=gamma")).body == []
    assert [w["name"] for w in (await api.get("/v2/workers?type=image")).body] == ["Alpha", "beta"]
    assert [w["name"] for w in (await api.get("/v2/workers?type=")).body] == ["Alpha", "beta"]
    assert (await api.get("/v2/workers?type=text")).body == []
    found = await api.get("/v2/workers/name/BETA")
    assert found.status == 200 and found.body["name"] == "beta" and found.body["type"] == "image"
    assert found.body["kudos_details"] == {"generated": 0.0, "uptime": 0} and found.body["team"] == {
        "name": None,
        "id": None,
    }
    missing = await api.get("/v2/workers/name/gamma")
    assert missing.status == 404 and missing.rc == "WorkerNotFound"


async def test_image_stats_per_model_and_totals_in_pixelsteps(coordinator: RunningCoordinator) -> None:
    api = Api(coordinator.url)
    empty = (await api.get("/v2/stats/img/models")).body
    assert empty == {"day": {}, "month": {}, "total": {}}
    await made(coordinator, n=1, width=64, height=64, steps=4)
    stats = (await api.get("/v2/stats/img/models?model_state=all")).body
    assert stats == {"day": {"tiny-sd": 1}, "month": {"tiny-sd": 1}, "total": {"tiny-sd": 1}}
    assert (await api.get("/v2/stats/img/models?model_state=custom")).body["total"] == {}
    bad = await api.get("/v2/stats/img/models?model_state=nonsense")
    assert bad.status == 400 and bad.rc == "ValidationError"
    totals = (await api.get("/v2/stats/img/totals")).body
    assert totals["total"] == {"images": 1, "ps": 64 * 64 * 4}


async def test_news_modes_and_documents(coordinator: RunningCoordinator) -> None:
    api = Api(coordinator.url)
    news = (await api.get("/v2/status/news")).body
    assert news and {"date_published", "newspiece", "importance"} <= set(news[0])
    assert (await api.get("/v2/status/modes")).body == {
        "maintenance_mode": False,
        "invite_only_mode": False,
        "raid_mode": False,
    }
    for name in ("terms", "privacy", "sponsors"):
        html = (await api.get(f"/v2/documents/{name}")).body
        assert set(html) == {"html", "markdown"} and html["html"].startswith("<h1>") and html["markdown"] is None
        markdown = (await api.get(f"/v2/documents/{name}?format=markdown")).body
        assert markdown["markdown"].startswith("# ") and markdown["html"] is None
    assert (await api.get("/v2/documents/terms?format=pdf")).status == 400
    performance = (await api.get("/v2/status/performance")).body
    assert performance["text_worker_count"] == 0 and performance["interrogator_count"] == 0


async def test_users_list_and_moderator_edits(coordinator: RunningCoordinator) -> None:
    rich = await coordinator.create_account("rich", kudos=500)
    poor = await coordinator.create_account("poor", kudos=5)
    moderator = await coordinator.create_account("mod")
    await coordinator.broker.moderation.set_moderator(moderator.id, True)
    api = Api(coordinator.url)
    by_kudos = [u["username"] for u in (await api.get("/v2/users")).body]
    assert by_kudos == [f"rich#{rich.id}", f"poor#{poor.id}", f"mod#{moderator.id}"]
    by_age = [u["id"] for u in (await api.get("/v2/users?sort=age")).body]
    assert by_age == [rich.id, poor.id, moderator.id]
    assert (await api.get("/v2/users?page=2")).body == []
    assert (await api.get("/v2/users?sort=name")).status == 400

    refused = await requester(coordinator, rich).call("PUT", f"/v2/users/{poor.id}", {"kudos": 100})
    assert refused.status == 403 and refused.rc == "NotModerator"
    change = {"kudos": 100, "trusted": True}
    edited = await requester(coordinator, moderator).call("PUT", f"/v2/users/{poor.id}", change)
    assert edited.status == 200 and edited.body == {"username": f"poor#{poor.id}", "new_kudos": 105.0, "trusted": True}
    details = (await api.get(f"/v2/users/{poor.id}")).body
    assert details["kudos"] == 105.0 and details["trusted"] and not details["moderator"]
    assert (await api.get(f"/v2/users/{moderator.id}")).body["moderator"] is True
    unknown = await requester(coordinator, moderator).call("PUT", f"/v2/users/{poor.id}", {"vpn": True})
    assert unknown.status == 400 and unknown.rc == "ValidationError"
    assert (await requester(coordinator, moderator).call("PUT", "/v2/users/999", {"kudos": 1})).rc == "UserNotFound"
    anonymous = await api.call("PUT", f"/v2/users/{poor.id}", {"kudos": 1})
    assert anonymous.status == 403  # require_account: no account, no moderator
    ledger = (await api.get(f"/v2/users/{poor.id}/ledger")).body["entries"]
    assert ledger[0]["amount"] == 100 and ledger[0]["kind"] == "admin"


async def test_nul_in_a_prompt_is_refused(coordinator: RunningCoordinator) -> None:
    alice = await coordinator.create_account("alice", kudos=100)
    refused = await requester(coordinator, alice).post("/v2/generate/async", small(prompt="a cat\u0000 on a mat"))
    assert refused.status == 400 and refused.rc == "ValidationError" and "NUL" in refused.body["message"]


async def test_swagger_2_lists_every_route_under_ai_hordes_names(coordinator: RunningCoordinator) -> None:
    document = (await Api(coordinator.url).get("/swagger.json")).body
    assert document["swagger"] == "2.0" and document["basePath"] == "/api"
    definitions = document["definitions"]
    routes = {
        (route.method, route.resource.canonical.removeprefix("/api"))
        for route in coordinator.app.router.routes()
        if route.method != "HEAD" and route.resource.canonical.startswith("/api")
    }
    documented = {(method.upper(), path) for path, operations in document["paths"].items() for method in operations}
    assert routes == documented
    generate = document["paths"]["/v2/generate/async"]["post"]
    (payload,) = [p for p in generate["parameters"] if p["in"] == "body"]
    assert payload["name"] == "payload" and payload["schema"] == {"$ref": "#/definitions/GenerationInputStable"}
    request = definitions["GenerationInputStable"]
    assert request["properties"]["params"] == {"$ref": "#/definitions/ModelGenerationInputStable"}
    assert request["properties"]["source_image"]["x-nullable"] is True
    assert generate["responses"]["202"]["schema"] == {"$ref": "#/definitions/RequestAsync"}
    assert generate["responses"]["400"]["schema"] == {"$ref": "#/definitions/RequestError"}
    # Only AI Horde's fields: our extensions are in /api/openapi.json.
    assert not PROVENANCE_FIELDS & set(definitions["GenerationStable"]["properties"])
    assert "jobs" not in definitions["GenerationPayloadStable"]["properties"]
    assert (
        "jobs"
        in (await Api(coordinator.url).get("/openapi.json")).body["components"]["schemas"]["PopResponse"]["properties"]
    )
    for definition in definitions.values():  # a Swagger 2.0 definition is an object, without 2020-12 keywords
        text = json.dumps(definition)
        assert definition["type"] == "object" and not any(word in text for word in ('"anyOf"', '"$defs"', '"const"'))


async def test_a_censorship_entry_marks_the_image_censored(coordinator: RunningCoordinator) -> None:
    alice = await coordinator.create_account("alice", kudos=100)
    api = requester(coordinator, alice)
    worker = node(coordinator, await coordinator.create_account("owner"), "n1", signed=False)
    ids = [await generate(api, small()) for _ in range(2)]
    for metadata in ([{"type": "censorship", "value": "nsfw"}], [{"type": "lora", "value": "download_failed"}]):
        popped = await pop_job(worker)
        job_id = popped.body["ids"][0]
        body = {
            "id": job_id,
            "generation": b64(tiny_webp()),
            "state": "ok",
            "seed": popped.body["payload"]["seed"],
            "gen_metadata": metadata,
        }
        assert (await worker.api.post("/v2/generate/submit", body)).status == 200
    censored = [(await api.get(f"/v2/generate/status/{i}")).body["generations"][0]["censored"] for i in ids]
    assert censored == [True, False]


async def test_our_skip_reason_only_when_asked(coordinator: RunningCoordinator) -> None:
    """`failed_here` (a job that faulted on this node waits for another) is ours: strict clients never see it."""
    alice = await coordinator.create_account("alice", kudos=100)
    await generate(requester(coordinator, alice), small())
    worker = node(coordinator, await coordinator.create_account("owner"), "n1")
    popped = await pop_job(worker)
    fault = {"id": popped.body["ids"][0], "generation": "", "state": "faulted", "seed": popped.body["payload"]["seed"]}
    fault["signature"] = sign_result(
        worker.api.identity, ResultDocument(job_id=fault["id"], image_sha256=None, seed=fault["seed"], state="faulted")
    )
    assert (await worker.api.post("/v2/generate/submit", fault)).status == 200
    assert (await worker.pop()).body["skipped"] == {"failed_here": 1}
    worker.api.provenance = False
    bare = await worker.pop()
    assert bare.body["ids"] == [] and bare.body["skipped"] == {}


# AI Horde's fields of these answers (its `RequestStatusCheck`, `HordePerformance`, `ActiveModel`): all a strict
# client may see without asking for ours.
AI_HORDE_CHECK = {
    "finished",
    "processing",
    "restarted",
    "waiting",
    "done",
    "faulted",
    "wait_time",
    "queue_position",
    "kudos",
    "is_possible",
}
AI_HORDE_PERFORMANCE = {
    "queued_requests",
    "queued_megapixelsteps",
    "past_minute_megapixelsteps",
    "worker_count",
    "thread_count",
    "queued_text_requests",
    "text_worker_count",
    "text_thread_count",
    "queued_tokens",
    "past_minute_tokens",
    "queued_forms",
    "interrogator_count",
    "interrogator_thread_count",
}
AI_HORDE_MODEL = {"name", "count", "performance", "queued", "jobs", "eta", "type"}


async def test_our_outlook_fields_only_when_asked(coordinator: RunningCoordinator) -> None:
    """`is_possible_reason`, `cancelled`, the network's `eta` and speed, per-model service levels: ours."""
    alice = await coordinator.create_account("alice", kudos=100)
    request_id = await generate(requester(coordinator, alice), small(models=["nobody-serves-this"]))
    node(coordinator, await coordinator.create_account("owner"), "n1")  # none online for that model
    plain, asking = Api(coordinator.url, provenance=False), Api(coordinator.url)
    check = (await plain.get(f"/v2/generate/check/{request_id}")).body
    assert set(check) == AI_HORDE_CHECK and check["is_possible"] is False, check
    ours = (await asking.get(f"/v2/generate/check/{request_id}")).body
    assert ours["is_possible_reason"] and ours["cancelled"] is False, ours
    assert set((await plain.get("/v2/status/performance")).body) == AI_HORDE_PERFORMANCE
    assert {"eta", "megapixelsteps_per_second"} <= set((await asking.get("/v2/status/performance")).body)
    await node(coordinator, await coordinator.create_account("other"), "n2").pop()  # one model online
    models = (await plain.get("/v2/status/models")).body
    assert models and all(set(model) == AI_HORDE_MODEL for model in models), models
    full = (await asking.get("/v2/status/models")).body
    assert all({"time_to_first_image_p50", "time_to_done_p95"} <= set(model) for model in full), full


async def test_priority_usernames_are_served_first(coordinator: RunningCoordinator) -> None:
    """AI Horde's pop field `priority_usernames` (`name#id`, or a bare name): their requests before the queue's
    order, which would serve the richer requester first."""
    rich = await coordinator.create_account("rich", kudos=1000)
    friend = await coordinator.create_account("friend")
    await generate(requester(coordinator, rich), small("rich"))
    await generate(requester(coordinator, friend), small("friend"))
    owner = await coordinator.create_account("owner")
    favoured = ["nobody#99", f"rich#{friend.id}", f"friend#{friend.id}"]  # no such account, a wrong name, a friend
    favouring = node(coordinator, owner, "favouring", extra={"priority_usernames": favoured})
    first = await pop_job(favouring)
    assert first.body["payload"]["prompt"] == "friend", first.body  # friend's, although queued later and poorer
    second = await pop_job(node(coordinator, owner, "plain"))
    assert second.body["payload"]["prompt"] == "rich"
    assert (await favouring.pop()).body["ids"] == []


async def test_allow_unsafe_ipaddr_keeps_unsafe_addresses_requests_away(
    tmp_path: Path, database_url: str | None
) -> None:
    """An untrusted request from an operator-listed unsafe network goes only to nodes that allow unsafe IPs;
    a node that does not is told why in `skipped` (AI Horde's `unsafe_ip`)."""
    async with custom_coordinator(
        tmp_path, database_url, trust_forwarded_for=True, unsafe_networks=("10.9.0.0/16",)
    ) as coordinator:
        vpn = {"X-Forwarded-For": "10.9.1.2"}
        sent = await Api(coordinator.url).post("/v2/generate/async", small("anon", n=2), headers=vpn)
        assert sent.status == 202, sent.body
        check = f"/v2/generate/check/{sent.body['id']}?provenance=1"
        owner = await coordinator.create_account("owner")
        careful = node(coordinator, owner, "careful", extra={"allow_unsafe_ipaddr": False})
        empty = await careful.pop()
        assert empty.body["ids"] == [] and empty.body["skipped"] == {"unsafe_ip": 2}, empty.body
        # The only node online refuses unsafe addresses: the request says it cannot be served, and why.
        alone = (await Api(coordinator.url).get(check)).body
        assert alone["is_possible"] is False and "unsafe addresses" in alone["is_possible_reason"], alone
        assert (await pop_job(node(coordinator, owner, "open"))).body["payload"]["prompt"] == "anon"
        assert (await Api(coordinator.url).get(check)).body["is_possible"] is True  # one image waits for "open"
        # A trusted account's requests are never from an unsafe IP, as in AI Horde.
        trusted = await coordinator.create_account("trusted")
        async with coordinator.broker.services.database.transaction() as tx:
            await tx.set_account_trusted(trusted.id, True)
        accepted = await requester(coordinator, trusted).post("/v2/generate/async", small("ok"), headers=vpn)
        assert accepted.status == 202, accepted.body
        assert (await pop_job(careful)).body["payload"]["prompt"] == "ok"


async def test_a_nodes_own_refusals_are_counted_in_skipped(coordinator: RunningCoordinator) -> None:
    """AI Horde's `performance` (an extra-slow node, a request that wants no slow ones) and `blacklist` keys."""
    alice = await coordinator.create_account("alice", kudos=100)
    await generate(requester(coordinator, alice), {**small("a fox"), "slow_workers": False})
    owner = await coordinator.create_account("owner")
    slow = await node(coordinator, owner, "slow", extra={"extra_slow_worker": True}).pop()
    assert slow.body["ids"] == [] and slow.body["skipped"] == {"performance": 1}, slow.body
    picky = await node(coordinator, owner, "picky", extra={"blacklist": ["fox"]}).pop()
    assert picky.body["ids"] == [] and picky.body["skipped"] == {"blacklist": 1}, picky.body


async def test_a_custom_post_processing_order_reaches_the_node(coordinator: RunningCoordinator) -> None:
    """AI Horde's `custom` order (the post-processors run as listed) is routed like the others, never refused."""
    alice = await coordinator.create_account("alice", kudos=100)
    chain = ["RealESRGAN_x2plus", "CodeFormers", "strip_background"]
    body = small(post_processing=chain, post_processing_order="custom")
    await generate(requester(coordinator, alice), body)
    worker = node(coordinator, await coordinator.create_account("owner"), "n1", extra={"allow_post_processing": True})
    payload = (await pop_job(worker)).body["payload"]
    assert (payload["post_processing"], payload["post_processing_order"]) == (chain, "custom"), payload
