"""Nodes as the API shows them, network status, and the OpenAPI document."""

from typing import Any

from tests.api_support import generate, node, requester, small
from tests.conftest import RunningCoordinator
from tests.helpers import Api


async def test_workers_list_and_detail(coordinator: RunningCoordinator) -> None:
    owner = await coordinator.create_account("owner")
    worker = node(
        coordinator,
        owner,
        "n1",
        models=["tiny-sd", "other"],
        max_pixels=512 * 512,
        extra={"threads": 2, "nsfw": True, "allow_lora": True, "allow_controlnet": True},
    )
    alice = await coordinator.create_account("alice", kudos=100)
    await generate(requester(coordinator, alice), small())
    reward = (await worker.serve_one()).body["reward"]
    api = Api(coordinator.url)
    [listed] = (await api.get("/v2/workers")).body
    assert listed["name"] == "n1" and listed["online"] is True
    assert listed["models"] == ["tiny-sd", "other"] and listed["max_pixels"] == 512 * 512
    assert listed["threads"] == 2 and listed["nsfw"] is True and listed["lora"] is True
    assert listed["controlnet"] is True and listed["sdxl_controlnet"] is False
    assert listed["requests_fulfilled"] == 1 and listed["kudos_rewards"] == reward
    assert listed["owner"] == str(owner.id)
    assert listed["public_key"] == worker.api.identity.public_key.text()
    assert listed["bridge_agent"] == "sim:1:tests"
    detail = await api.get(f"/v2/workers/{listed['id']}")
    assert detail.status == 200 and detail.body == listed
    me = (await requester(coordinator, owner).get("/v2/find_user")).body
    assert me["worker_ids"] == [listed["id"]] and me["worker_count"] == 1


async def test_only_the_owner_changes_or_deletes_a_worker(coordinator: RunningCoordinator) -> None:
    owner = await coordinator.create_account("owner")
    eve = await coordinator.create_account("eve")
    await node(coordinator, owner, "n1").pop()
    await node(coordinator, owner, "n2").pop()
    workers = {w["name"]: w for w in (await Api(coordinator.url).get("/v2/workers")).body}
    path = f"/v2/workers/{workers['n1']['id']}"
    for api in (requester(coordinator, eve), Api(coordinator.url)):
        changed = await api.call("PUT", path, {"info": "mine now"})
        assert changed.status == 403, changed.body
        deleted = await api.call("DELETE", path)
        assert deleted.status == 403
    assert (await Api(coordinator.url).get(path)).body["info"] is None

    mine = requester(coordinator, owner)
    updated = await mine.call("PUT", path, {"info": "a fast card", "maintenance": True})
    assert updated.status == 200, updated.body
    detail = (await Api(coordinator.url).get(path)).body
    assert detail["info"] == "a fast card" and detail["maintenance_mode"] is True
    clash = await mine.call("PUT", path, {"name": "N2"})
    assert (clash.status, clash.rc) == (400, "WorkerNameAlreadyExists")
    assert (await mine.call("DELETE", path)).body == {"deleted_id": workers["n1"]["id"], "deleted_name": "n1"}
    assert (await Api(coordinator.url).get(path)).rc == "WorkerNotFound"
    missing = await mine.call("PUT", "/v2/workers/nope", {"info": "x"})
    assert (missing.status, missing.rc) == (404, "WorkerNotFound")


async def test_status_endpoints(coordinator: RunningCoordinator) -> None:
    api = Api(coordinator.url)
    heartbeat = await api.get("/v2/status/heartbeat")
    assert heartbeat.status == 200 and heartbeat.body["message"] == "OK" and heartbeat.body["version"]
    info = (await api.get("/v2/coordinator")).body
    assert info["public_key"] == coordinator.public_key.text()
    assert {"signed-requests", "signed-jobs", "signed-results", "signed-ledger-head"} <= set(info["features"])

    owner = await coordinator.create_account("owner")
    worker = node(coordinator, owner, "n1", extra={"threads": 3})
    await worker.pop()
    alice = await coordinator.create_account("alice", kudos=100)
    await generate(requester(coordinator, alice), small(n=2))
    await generate(requester(coordinator, alice), small())
    performance = (await api.get("/v2/status/performance")).body
    assert performance["queued_requests"] == 2
    assert performance["worker_count"] == 1 and performance["thread_count"] == 3
    before = (await api.get("/v2/stats/img/totals")).body
    await worker.serve_one()
    await worker.serve_one()
    after = (await api.get("/v2/stats/img/totals")).body
    for period in ("minute", "hour", "day", "month", "total"):
        assert after[period]["images"] - before[period]["images"] == 2, period
    assert (await api.get("/v2/status/performance")).body["queued_requests"] == 1


async def test_queued_work_is_pixels_times_steps(coordinator: RunningCoordinator) -> None:
    alice = await coordinator.create_account("alice", kudos=100)
    api = requester(coordinator, alice)
    await generate(api, small(n=2, width=512, height=512, steps=30))
    await generate(api, small(models=["tiny-sd", "other"], width=512, height=768, steps=20))
    await generate(api, small(models=[], steps=4))  # any model: 64×64
    square, tall, tiny = 512 * 512 * 30, 512 * 768 * 20, 64 * 64 * 4
    performance = (await Api(coordinator.url).get("/v2/status/performance")).body
    # Each job once, though the second request's job waits for two models.
    assert performance["queued_megapixelsteps"] == round((2 * square + tall + tiny) / 1e6, 2) == 23.61
    models = {m["name"]: m for m in (await Api(coordinator.url).get("/v2/status/models")).body}
    # A job for any model may run on each model, so it counts for each (issue 15: `horde models` showed 0).
    assert (models["tiny-sd"]["queued"], models["tiny-sd"]["jobs"]) == (2 * square + tall + tiny, 4)
    assert (models["other"]["queued"], models["other"]["jobs"]) == (tall + tiny, 2)


async def test_openapi_lists_every_route_with_schemas(coordinator: RunningCoordinator) -> None:
    reply = await Api(coordinator.url).get("/openapi.json")
    assert reply.status == 200
    document = reply.body
    assert document["openapi"].startswith("3.")
    schemas = document["components"]["schemas"]

    def resolve(ref: str) -> dict[str, Any]:
        assert ref.startswith("#/components/schemas/"), ref
        return schemas[ref.rsplit("/", 1)[1]]

    # Every route of the API; `/metrics` and the status page (`/`, `/static/`) are not API (routes/site.py).
    routes = {
        (route.method, route.resource.canonical)
        for route in coordinator.app.router.routes()
        if route.method != "HEAD" and route.resource.canonical.startswith("/api/")
    }
    documented = {(method.upper(), path) for path, operations in document["paths"].items() for method in operations}
    assert routes == documented
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert operation["summary"], (method, path)
            for status, response in operation["responses"].items():
                schema = response.get("content", {}).get("application/json", {}).get("schema")
                if schema is not None:
                    assert resolve(schema.get("items", schema)["$ref"]), (method, path, status)
            if "requestBody" in operation:
                body_schema = operation["requestBody"]["content"]["application/json"]["schema"]
                assert resolve(body_schema["$ref"])["properties"], (method, path)
            for parameter in operation["parameters"]:
                if parameter["in"] == "path":
                    assert "{" + parameter["name"] + "}" in path
    generate_op = document["paths"]["/api/v2/generate/async"]["post"]
    request_schema = resolve(generate_op["requestBody"]["content"]["application/json"]["schema"]["$ref"])
    assert "prompt" in request_schema["properties"] and "prompt" in request_schema["required"]
    assert "202" in generate_op["responses"]
    # Every nested reference in the components resolves too.
    text = str(schemas)
    for name in {part.split("'")[0] for part in text.split("#/components/schemas/")[1:]}:
        assert name in schemas, name
