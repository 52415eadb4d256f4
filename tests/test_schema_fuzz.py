"""Schemathesis over the whole served OpenAPI document, against a live coordinator on a loopback port.

Every operation in `/api/openapi.json` gets generated requests, valid and invalid (the examples, coverage
and fuzzing phases, a bounded number of examples each, derandomized so CI sees the same cases every run),
once anonymously and once with the apikey of a funded account, on SQLite and on PostgreSQL. Two checks:
no answer is a 5xx, and every answer matches the schema the document gives for it (the endpoint's model, or
the `{message, rc}` body). Generated ids name nothing, so a last test makes the same checks on calls that
name what the seeding made (a finished request, a node, an account).

The run is schemathesis's own engine (what `schemathesis run` drives), in process: its pytest plugin's lazy
schemas do not work with pytest 9. The coordinator runs in a thread with its own event loop, because the
engine calls the API with a blocking HTTP client, which would stall a coordinator sharing the test's loop.
"""

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from schemathesis import engine
from schemathesis.checks import not_a_server_error
from schemathesis.engine import Status, events
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.api_support import generate, node, requester, small
from tests.conftest import ENGINES, POSTGRES_DSN, RunningCoordinator, coordinator_config, start_coordinator
from tests.helpers import Api
from tests.pg import fresh_database

# Per operation and phase: ~20 operations, ~2,500 requests per caller, 20–60 s per engine on 2 cores.
MAX_EXAMPLES = 40
FUNDED_KUDOS = 1_000_000.0
CHECKS = ("not_a_server_error", "response_schema_conformance")
CHECK_FUNCTIONS = [not_a_server_error, response_schema_conformance]
# The OpenAPI 3.1 document, generated from the endpoint tables and the models (the Swagger 2.0 twin at
# /api/swagger.json is derived from it and knows less of JSON Schema).
DOCUMENT = "/api/openapi.json"
WEBHOOK = "https://127.0.0.1/hook"  # refused (loopback) without a DNS lookup


@dataclass
class Seeded:
    """What the seeding made, for the calls that need real ids."""

    owner_apikey: str
    owner_id: int
    done_request: str  # both images made, by the node below, as URLs
    inline_request: str  # done too, r2: false (images inline in the status)
    waiting_request: str
    worker_id: str
    image_url: str


@dataclass
class LiveCoordinator:
    running: RunningCoordinator
    loop: asyncio.AbstractEventLoop
    seeded: Seeded | None = None

    def run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=60)


@pytest.fixture(scope="module", params=ENGINES)
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCoordinator]:
    """SQLite, and PostgreSQL when HORDE_TEST_POSTGRES_DSN is set: its text refuses what SQLite stores (a NUL)."""
    if request.param == "postgresql" and not POSTGRES_DSN:
        pytest.skip("PostgreSQL engine: set HORDE_TEST_POSTGRES_DSN to run (CI always does)")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fuzzed-coordinator", daemon=True)
    thread.start()

    def run(coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=60)

    database = fresh_database(POSTGRES_DSN) if request.param == "postgresql" else contextlib.nullcontext()
    try:
        url = run(database.__aenter__()) if request.param == "postgresql" else None
        data_dir: Path = tmp_path_factory.mktemp("fuzz") / "coordinator"
        live = LiveCoordinator(run(start_coordinator(coordinator_config(data_dir, url))), loop)
        try:
            live.seeded = live.run(seed(live.running))
            yield live
        finally:
            live.run(live.running.stop())
    finally:
        if request.param == "postgresql":
            run(database.__aexit__(None, None, None))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


async def seed(coordinator: RunningCoordinator) -> Seeded:
    """Something for every list to show: a node that has served a request, and a request still waiting."""
    owner = await coordinator.create_account("fuzz-owner", 1000)
    api = requester(coordinator, owner)
    done = await generate(api, small(n=2))
    inline = await generate(api, {**small(), "r2": False})
    worker = node(coordinator, owner, "fuzz-node")
    for request_id, images in ((done, 2), (inline, 1)):
        while (await api.get(f"/v2/generate/check/{request_id}")).body["finished"] < images:
            assert await worker.serve_one(wait=0) is not None
    waiting = await generate(api, small())
    worker_id = (await Api(coordinator.url).get("/v2/workers")).body[0]["id"]
    status = await api.get(f"/v2/generate/status/{done}")
    image = next(g["img"] for g in status.body["generations"] if g["img"].startswith("http"))
    return Seeded(owner.apikey, owner.id, done, inline, waiting, worker_id, image.split("/api", 1)[1])


def fuzz_schema(live: LiveCoordinator, apikey: str | None) -> schemathesis.BaseSchema:
    document = requests.get(f"{live.running.url}{DOCUMENT}", timeout=30).json()
    config = schemathesis.Config.from_dict(
        {
            "base-url": live.running.url,
            "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "mode": "all"},
            "phases": {"stateful": {"enabled": False}},
            "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
            "request-timeout": 30,
            "suppress-health-check": ["all"],
        }
    )
    schema = schemathesis.openapi.from_dict(document, config=config)

    @schema.hook
    def map_case(context: schemathesis.HookContext, case: schemathesis.Case) -> schemathesis.Case:
        """The caller's apikey (or none); no long-polls (a pop that waits 30 s for work tests nothing more);
        no event stream of a real request (schemathesis reuses ids from earlier answers, and a live stream
        stays open until its request ends; it has no JSON schema to check either); and webhooks to an address
        literal: a generated host name would be looked up in DNS, which a test must not depend on
        (tests/test_abuse_errors.py covers the names that once failed)."""
        if apikey is None:
            case.headers.pop("apikey", None)
        else:
            case.headers["apikey"] = apikey
        if isinstance(case.body, dict) and isinstance(case.body.get("wait"), int | float):
            case.body["wait"] = 0
        if case.query and "wait" in case.query:
            case.query["wait"] = "0"
        if isinstance(case.body, dict) and isinstance(case.body.get("webhook"), str):
            case.body["webhook"] = WEBHOOK
        if case.operation.path.endswith("/stream/{id}") and isinstance(case.path_parameters.get("id"), str):
            case.path_parameters["id"] = "unknown-" + case.path_parameters["id"][:100]
        return case

    return schema


def failures_of(schema: schemathesis.BaseSchema) -> tuple[int, list[str]]:
    """(cases run, a readable line per failed check or engine error)."""
    cases, found = 0, []
    for event in engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            cases += len(event.recorder.cases)
            for case_id, checks in event.recorder.checks.items():
                for check in checks:
                    if check.status == Status.FAILURE and check.failure_info is not None:
                        found.append(describe(event.recorder, case_id, check))
        elif isinstance(event, events.NonFatalError | events.FatalError):
            found.append(f"engine error: {getattr(event, 'value', None) or getattr(event, 'exception', None)!r}")
    return cases, found


def describe(recorder: Any, case_id: str, check: Any) -> str:
    interaction = recorder.interactions.get(case_id)
    response = interaction.response if interaction is not None else None
    answer = f"{response.status_code} {(response.content or b'')[:200]!r}" if response is not None else "no answer"
    return (
        f"{recorder.label}: {check.name}: {check.failure_info.failure.title}\n    {check.failure_info.code_sample}"
        f"\n    → {answer}"
    )


@pytest.mark.parametrize("caller", ["anonymous", "funded apikey"])
def test_whole_api_answers_without_5xx_and_within_its_schema(live: LiveCoordinator, caller: str) -> None:
    apikey = (
        live.run(live.running.create_account("fuzz-funded", FUNDED_KUDOS)).apikey if caller != "anonymous" else None
    )
    cases, found = failures_of(fuzz_schema(live, apikey))
    assert cases > 200  # the run really exercised the API
    assert not found, f"{len(found)} failures:\n" + "\n".join(found[:40])


def test_real_resources_answer_within_their_schemas(live: LiveCoordinator) -> None:
    """Generated ids name nothing; these name what the seeding made, so the documented success schemas
    (a status with its images, a worker, an account's ledger) are checked against real answers too."""
    seeded = live.seeded
    assert seeded is not None
    schema = fuzz_schema(live, seeded.owner_apikey)
    owner = {"apikey": seeded.owner_apikey}
    calls = [
        ("GET", "/v2/generate/check/{id}", {"id": seeded.done_request}, {}, 200),
        ("GET", "/v2/generate/status/{id}", {"id": seeded.done_request}, {}, 200),
        ("GET", "/v2/generate/status/{id}", {"id": seeded.inline_request}, {}, 200),
        ("GET", "/v2/workers/{id}", {"id": seeded.worker_id}, {}, 200),
        ("GET", "/v2/users/{id}", {"id": str(seeded.owner_id)}, {}, 200),
        ("GET", "/v2/users/{id}/ledger", {"id": str(seeded.owner_id)}, {}, 200),
        ("GET", "/v2/status/models/{model_name}", {"model_name": "tiny-sd"}, {}, 200),
        ("GET", "/v2/find_user", {}, owner, 200),
        ("PUT", "/v2/workers/{id}", {"id": seeded.worker_id}, owner, 200),
        ("DELETE", "/v2/generate/status/{id}", {"id": seeded.waiting_request}, owner, 200),
    ]
    paths = {path.removeprefix("/api"): path for path in schema.raw_schema["paths"]}
    for method, path, parameters, headers, status in calls:
        operation = schema[paths[path]][method]
        body = {"info": "seeded"} if method == "PUT" else schemathesis.core.NOT_SET
        case = operation.Case(path_parameters=parameters, headers=headers, body=body)
        response = case.call_and_validate(checks=CHECK_FUNCTIONS)
        assert response.status_code == status, (method, path, response.status_code, response.text[:300])
    image = requests.get(live.running.url + "/api" + seeded.image_url, timeout=30)
    assert image.status_code == 200 and image.content[:4] == b"RIFF"
