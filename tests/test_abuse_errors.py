"""Issue 11, case 11: malformed input is a 4xx with an rc, never a 500; an unexpected failure is logged with
its traceback in both log formats.

Against a real coordinator on a loopback port: over-long path parameters (which once reached the file
system as ENAMETOOLONG), over-long numbers (which once reached int()'s digit limit), bodies nested deeper
than the JSON bound (which once reached Python's recursion limit), and a handler that fails unexpectedly.
"""

import asyncio
import contextlib
import io
import json
import logging
from collections.abc import Callable, Iterator

import pytest

from coordinator.logs import configure_logging
from protocol.errors import RC
from tests.api_support import generate, node, pop_job, raw_call, requester, small, snapshot
from tests.conftest import RunningCoordinator
from tests.helpers import Api

MAX_JSON_DEPTH = 64  # the documented bound (docs/security.md)
LONG_NAME = "a" * 300
# 100 characters, 400 bytes: within the API's bound on a path parameter, past any file system's name limit.
LONG_BYTES_NAME = "\U0001f600" * 100


def assert_refused(reply: object, statuses: tuple[int, ...] = (400, 404), rc: str | None = None) -> None:
    status, body = reply.status, reply.body  # type: ignore[attr-defined]
    assert status in statuses, (status, body)
    assert isinstance(body, dict) and body.get("rc") and body.get("message"), body
    if rc is not None:
        assert body["rc"] == rc, body


@pytest.mark.parametrize(
    ("path", "parameter"),
    [
        (f"/v2/images/{LONG_NAME}.webp", "name"),
        (f"/v2/sources/{LONG_NAME}.src", "name"),
        (f"/v2/workers/{LONG_NAME}", "id"),
        (f"/v2/generate/check/{LONG_NAME}", "id"),
        (f"/v2/generate/status/{LONG_NAME}", "id"),
        (f"/v2/status/models/{LONG_NAME}", "model_name"),
        ("/v2/users/" + "9" * 5000, "id"),
        ("/v2/users/" + "9" * 5000 + "/ledger", "id"),
    ],
)
async def test_over_long_path_parameters_are_refused_with_an_rc(
    coordinator: RunningCoordinator, path: str, parameter: str
) -> None:
    reply = await Api(coordinator.url).get(path)
    assert_refused(reply, (400,), RC.VALIDATION)
    assert reply.body["errors"] == {parameter: "at most 128 characters"}


@pytest.mark.parametrize("kind", ["images", "sources"])
async def test_an_image_name_past_the_file_systems_limit_is_not_found(
    coordinator: RunningCoordinator, kind: str
) -> None:
    """Within the API's bound in characters, past the 255 bytes a file name may have."""
    assert_refused(await Api(coordinator.url).get(f"/v2/{kind}/{LONG_BYTES_NAME}.webp"), (404,), RC.NOT_FOUND)


async def test_over_long_path_parameters_are_refused_on_every_method(coordinator: RunningCoordinator) -> None:
    owner = await coordinator.create_account("owner", 100)
    api = requester(coordinator, owner)
    for method, path, body in [
        ("DELETE", f"/v2/generate/status/{LONG_NAME}", None),
        ("PUT", f"/v2/workers/{LONG_NAME}", {"info": "x"}),
        ("DELETE", f"/v2/workers/{LONG_NAME}", None),
        ("PUT", f"/v2/upload/{LONG_NAME}?token=x", b"bytes"),
    ]:
        assert_refused(await api.call(method, path, body), (400,), RC.VALIDATION)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2/workers/a%00b"),
        ("GET", "/v2/generate/check/%00"),
        ("GET", "/v2/generate/status/%00"),
        ("DELETE", "/v2/generate/status/%00"),
        ("PUT", "/v2/workers/%00"),
        ("PUT", "/v2/upload/%00?token=1.a"),
    ],
)
async def test_a_nul_in_a_path_parameter_is_refused(coordinator: RunningCoordinator, method: str, path: str) -> None:
    """PostgreSQL's text cannot hold U+0000: once a 500 from asyncpg, now refused before any handler."""
    owner = await coordinator.create_account("owner", 100)
    body = b'{"info": "x"}' if method == "PUT" else b""
    reply = await raw_call(coordinator, method, path, body, {"apikey": owner.apikey})
    assert_refused(reply, (400,), RC.VALIDATION)
    assert "U+0000" in reply.body["message"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v2/generate/async", {**small(), "prompt": "a\u0000b"}),
        ("/v2/generate/async", {**small(), "models": ["tiny\u0000sd"]}),
        ("/v2/generate/pop", {"name": "node\u0000", "models": ["tiny-sd"]}),
        ("/v2/kudos/transfer", {"username": "bob\u0000", "amount": 1}),
        ("/v2/generate/submit", {"id": "\u0000", "generation": "x", "seed": "1"}),
        ("/v2/generate/async", {**small(), "params": {"loras": [{"name\u0000": "x"}]}}),  # a key too
    ],
)
async def test_a_nul_in_body_text_is_refused(
    coordinator: RunningCoordinator, path: str, body: dict[str, object]
) -> None:
    owner = await coordinator.create_account("owner", 100)
    before = await snapshot(coordinator)
    raw = json.dumps(body).replace("\\\\u0000", "\\u0000").encode()  # the JSON escape, not a backslash
    assert b"\\u0000" in raw and b"\\\\u0000" not in raw
    reply = await raw_call(coordinator, "POST", path, raw, {"Content-Type": "application/json", "apikey": owner.apikey})
    assert_refused(reply, (400,), RC.VALIDATION)
    assert "U+0000" in reply.body["message"]
    assert await snapshot(coordinator) == before


async def test_a_webhook_host_idna_cannot_encode_is_refused(coordinator: RunningCoordinator) -> None:
    """A 64-character label (found by tests/test_schema_fuzz.py): IDNA refuses it with UnicodeError inside
    the lookup, before any network, which was a 500."""
    owner = await coordinator.create_account("owner", 100)
    before = await snapshot(coordinator)
    reply = await requester(coordinator, owner).post(
        "/v2/generate/async", {**small(), "webhook": f"https://{'0' * 64}.example/hook"}
    )
    assert_refused(reply, (400,), RC.WEBHOOK_REFUSED)
    assert await snapshot(coordinator) == before


async def test_over_long_numbers_in_queries_are_refused(coordinator: RunningCoordinator) -> None:
    owner = await coordinator.create_account("owner", 100)
    request_id = await generate(requester(coordinator, owner), small())
    reply = await Api(coordinator.url).get(f"/v2/generate/check/{request_id}?finished={'7' * 5000}")
    assert reply.status == 200, reply.body  # a `finished` count nobody could know is ignored, as a bad one is
    assert reply.body["waiting"] == 1
    assert_refused(await Api(coordinator.url).get("/v2/ledger?after=" + "9" * 5000), (400,), RC.VALIDATION)


async def test_an_over_long_upload_token_is_refused(coordinator: RunningCoordinator) -> None:
    owner = await coordinator.create_account("owner", 100)
    await generate(requester(coordinator, owner), small())
    popped = await pop_job(node(coordinator, owner, "n1"))
    job_id = popped.body["ids"][0]
    reply = await Api(coordinator.url).call("PUT", f"/v2/upload/{job_id}?token={'9' * 5000}.abc", b"bytes")
    assert_refused(reply, (400, 401, 403, 404))


def nested(depth: int, opening: bytes = b"[", closing: bytes = b"]", inner: bytes = b"") -> bytes:
    return opening * depth + inner + closing * depth


@pytest.mark.parametrize(
    "body",
    [
        nested(100_000),
        nested(100_000, b'{"a":', b"}", b"1"),
        b'{"prompt": "x", "params": {"loras": ' + nested(5_000) + b"}}",
        nested(100_000)[:-10],  # deep and unterminated
    ],
)
async def test_deeply_nested_json_is_refused_before_it_is_parsed(coordinator: RunningCoordinator, body: bytes) -> None:
    owner = await coordinator.create_account("owner", 100)
    before = await snapshot(coordinator)
    reply = await raw_call(
        coordinator, "POST", "/v2/generate/async", body, {"Content-Type": "application/json", "apikey": owner.apikey}
    )
    assert_refused(reply, (400,), RC.INVALID_JSON)
    assert "nest" in reply.body["message"]
    assert await snapshot(coordinator) == before


@pytest.mark.parametrize(
    ("lora_depth", "refused"), [(20, False), (MAX_JSON_DEPTH - 2, False), (MAX_JSON_DEPTH - 1, True)]
)
async def test_the_nesting_bound_is_exact(coordinator: RunningCoordinator, lora_depth: int, refused: bool) -> None:
    """Up to MAX_JSON_DEPTH levels a body reaches validation (the object and `params` are two of them)."""
    owner = await coordinator.create_account("owner", 100)
    body = b'{"prompt": "x", "params": {"loras": ' + nested(lora_depth) + b"}}"
    reply = await raw_call(
        coordinator, "POST", "/v2/generate/async", body, {"Content-Type": "application/json", "apikey": owner.apikey}
    )
    if refused:
        assert_refused(reply, (400,), RC.INVALID_JSON)
        assert reply.body["message"] == f"The request body nests deeper than {MAX_JSON_DEPTH} levels."
    else:
        assert_refused(reply, (400,), RC.VALIDATION)
        assert "params.loras.0" in json.dumps(reply.body["errors"]), reply.body


Configure = Callable[[str, bool], io.StringIO]


@pytest.fixture
def log_into_buffer() -> Iterator[Configure]:
    """Configures the coordinator's log as `horde-coordinator --log-level L --log-format F` does, with stderr
    a buffer (while configuring: the handler keeps the stream it was made with); restores the loggers after."""
    names = ("horde", "asyncpg", "aiohttp", "asyncio")
    saved = {
        name: (logging.getLogger(name).handlers[:], logging.getLogger(name).level, logging.getLogger(name).propagate)
        for name in names
    }
    buffer = io.StringIO()

    def configure(level: str, as_json: bool) -> io.StringIO:
        with contextlib.redirect_stderr(buffer):
            configure_logging(level, as_json=as_json)
        return buffer

    try:
        yield configure
    finally:
        for name, (handlers, level, propagate) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers[:], logger.level, logger.propagate = handlers, level, propagate


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
async def test_an_unexpected_failure_is_logged_with_its_traceback(
    coordinator: RunningCoordinator, log_into_buffer: Configure, monkeypatch: pytest.MonkeyPatch, as_json: bool
) -> None:
    captured_log = log_into_buffer("warning", as_json)

    async def broken() -> list:
        raise RuntimeError("roster exploded: marker-5f2a")

    monkeypatch.setattr(coordinator.broker.roster, "online", broken)
    reply = await Api(coordinator.url).get("/v2/status/models")
    assert_refused(reply, (500,), RC.INTERNAL)
    assert "marker-5f2a" not in json.dumps(reply.body)  # the details go to the log, not to the caller

    text = captured_log.getvalue()
    if as_json:
        events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        errors = [event for event in events if "marker-5f2a" in event.get("error", "")]
        assert len(errors) == 1, text
        traceback = errors[0]["error"]
    else:
        traceback = text
    assert "unhandled error on GET /api/v2/status/models" in text
    assert "Traceback (most recent call last)" in traceback, text
    assert "RuntimeError: roster exploded: marker-5f2a" in traceback
    assert "in broken" in traceback  # the frame that raised, not only the message


async def test_a_malformed_http_message_is_one_log_line_not_a_traceback(
    coordinator: RunningCoordinator, log_into_buffer: Configure
) -> None:
    """A client's garbage is the client's mistake: at the default level it is not logged at all (a flood of
    it must not fill the disk), and from --log-level info it is one line."""
    for level in ("warning", "info"):
        captured_log = log_into_buffer(level, False)
        host, port = coordinator.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /api/v2/status/heartbeat HTTP/1.1\r\nHost: x\r\nX-Bad: \x00\r\n\r\n")
        await writer.drain()
        answer = await reader.read()
        writer.close()
        assert answer.split(b"\r\n")[0].endswith(b" 400 Bad Request"), answer[:100]
        if level == "warning":
            assert captured_log.getvalue() == ""
    text = captured_log.getvalue()
    assert "Error handling request from 127.0.0.1: 400" in text, text
    assert "Traceback" not in text and len(text.strip().splitlines()) == 1, text
