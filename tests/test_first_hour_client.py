"""`horde` as a new requester meets it: it outlasts a coordinator restart, takes the short id it shows,
and answers each mistake with one line and a non-zero exit (real coordinator, real node)."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from tests.first_hour_support import Proc, coordinator, free_port, node_init, run, script, user_env

pytestmark = pytest.mark.timeout(300)
NODE_EXTRA_BLOCKER = "import sys\nfor name in ('torch', 'diffusers', 'transformers'):\n    sys.modules[name] = None\n"


def test_generate_keeps_waiting_through_a_coordinator_restart(tmp_path: Path, tiny_model_dir: Path) -> None:
    port = free_port()
    data, env = tmp_path / "coordinator", user_env(tmp_path)
    client = user_env(tmp_path, HORDE_URL=f"http://127.0.0.1:{port}")
    with coordinator(data, env, tmp_path, port) as (first, url):
        generate = Proc.start(
            [
                script("horde"),
                "generate",
                "through a restart",
                "--model",
                "tiny-sd",
                "--steps",
                "2",
                "--size",
                "64x64",
                "--out",
                str(tmp_path / "images"),
            ],
            client,
            tmp_path,
        )
        request_id = generate.wait_for(r"submitted request (\S+)")[1]
        generate.wait_for(rf"{request_id}: ")  # waiting, with no node yet
    assert first.process.returncode == 0
    generate.wait_for(r"coordinator unreachable \(.*\); retrying in \d+ s — the request is kept")
    assert generate.process.poll() is None, generate.output
    with coordinator(data, env, tmp_path, port):
        assert node_init(tmp_path, url, str(tiny_model_dir), "--register", "volunteer").rc == 0
        node = Proc.start([script("horde-node"), "run"], env, tmp_path)
        try:
            assert generate.wait() == 0, generate.output
        finally:
            node.stop()
    saved = sorted((tmp_path / "images").glob(f"{request_id}_*.webp"))
    assert len(saved) == 1 and saved[0].with_suffix(".json").exists(), generate.output


@pytest.fixture
def url(tmp_path: Path):  # type: ignore[no-untyped-def]
    with coordinator(tmp_path / "coordinator", user_env(tmp_path), tmp_path) as (_, address):
        yield address


def test_the_short_id_works_wherever_an_id_does_but_only_for_its_requester(tmp_path: Path, url: str) -> None:
    mine, theirs = user_env(tmp_path / "me", HORDE_URL=url), user_env(tmp_path / "them", HORDE_URL=url)
    asked = run([script("horde"), "generate", "a short id", "--model", "tiny-sd", "--no-wait"], mine, tmp_path)
    assert asked.rc == 0, asked.both
    request_id = asked.out.strip()
    short = request_id[:8]
    status = run([script("horde"), "status", short], mine, tmp_path)
    assert status.rc == 0 and status.out.startswith(f"{request_id}: "), status.both
    # Another requester (another machine, another config) cannot reach it by prefix: the coordinator
    # never resolves one.
    other = run([script("horde"), "status", short], theirs, tmp_path)
    assert other.one_line_error().endswith("was not found. It may have expired or never existed. (RequestNotFound)")
    cancelled = run([script("horde"), "cancel", short], mine, tmp_path)
    assert cancelled.rc == 0 and cancelled.out.startswith(f"cancelled {request_id};"), cancelled.both


def test_a_prompt_of_only_spaces_is_refused(tmp_path: Path, url: str) -> None:
    done = run([script("horde"), "generate", "   ", "--no-wait"], user_env(tmp_path, HORDE_URL=url), tmp_path)
    assert done.rc == 1
    assert done.one_line_error().startswith("error: the prompt is empty: describe the image to make")


def test_registering_a_second_name_with_the_same_key_names_the_key(tmp_path: Path, url: str) -> None:
    env = user_env(tmp_path, HORDE_URL=url)
    assert run([script("horde"), "keys", "new"], env, tmp_path).rc == 0
    assert run([script("horde"), "register", "alice"], env, tmp_path).rc == 0
    again = run([script("horde"), "register", "alicia"], env, tmp_path)
    line = again.one_line_error()
    assert line.startswith("error: This key is already registered, as alice#1: one key has one account."), line
    assert "alicia" not in line
    taken = run([script("horde"), "register", "alice"], user_env(tmp_path / "other", HORDE_URL=url), tmp_path)
    # (a fresh user: `register` first notes the identity it created, then the one error line)
    assert taken.rc == 1 and taken.err.splitlines()[-1] == (
        "error: The username alice is already taken; choose another. (NameAlreadyExists)"
    ), taken.err


def test_https_against_a_plain_http_coordinator_says_so(tmp_path: Path, url: str) -> None:
    wrong = url.replace("http://", "https://")
    done = run([script("horde"), "--url", wrong, "workers"], user_env(tmp_path), tmp_path)
    line = done.one_line_error()
    assert line.startswith(f"error: cannot reach coordinator at {wrong}: the TLS handshake failed"), line
    assert line.endswith("if the coordinator speaks plain HTTP, use an http:// URL") and "not permitted" not in line


def test_demo_without_the_node_extra_says_what_to_install(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(NODE_EXTRA_BLOCKER)
    done = run([script("horde"), "demo", "x"], user_env(tmp_path, PYTHONPATH=str(blocker)), tmp_path)
    assert done.rc == 1
    line = done.one_line_error()
    assert line.startswith("error: `horde demo` runs a node, which needs the node extra (torch, diffusers"), line


def test_a_failed_demo_keeps_the_log_it_points_at(tmp_path: Path) -> None:
    broken = tmp_path / "cache" / "tiny-sd"
    broken.mkdir(parents=True)
    (broken / "horde-model.json").write_text('{"name": "tiny-sd", "baseline": "stable_diffusion_1"}')
    env = user_env(tmp_path, HORDE_CACHE_DIR=str(tmp_path / "cache"))
    done = run([script("horde"), "demo", "x"], env, tmp_path)
    assert done.rc == 1 and "Traceback" not in done.both, done.both
    log = re.search(r"node exited before coming online \(exit 2\): .* — log: (\S+)", done.err)
    assert log, done.err
    assert "is a folder without a diffusers model" in Path(log[1]).read_text()
    assert f"kept logs and data in {Path(log[1]).parent}" in done.err


def test_interrupting_generate_while_unreachable_leaves_the_request(tmp_path: Path) -> None:
    """Ctrl-C during the retries: nobody to ask, so the request stays, and the way back is printed."""
    port = free_port()
    data, env = tmp_path / "coordinator", user_env(tmp_path)
    client = user_env(tmp_path, HORDE_URL=f"http://127.0.0.1:{port}")
    with coordinator(data, env, tmp_path, port):
        generate = Proc.start([script("horde"), "generate", "x", "--model", "tiny-sd"], client, tmp_path)
        request_id = generate.wait_for(r"submitted request (\S+)")[1]
        generate.wait_for(rf"{request_id}: ")
    generate.wait_for(r"coordinator unreachable")
    generate.signal(signal.SIGINT)
    assert generate.wait() == 130
    assert f"`horde wait {request_id}` picks it up later" in generate.output


def test_a_short_id_that_starts_two_requests_asks_for_more(tmp_path: Path) -> None:
    from client import recent
    from client.errors import UserError

    first, second = "3f2a9c1d-0000-4000-8000-000000000001", "3f2a9c1d-0000-4000-8000-000000000002"
    for request_id in (first, second):
        recent.remember(request_id, tmp_path)
    with pytest.raises(UserError, match="'3f2a9c1d' starts 2 of your requests; give more characters"):
        recent.resolve("3f2a9c1d", tmp_path)
    assert recent.resolve(second, tmp_path) == second
    assert recent.resolve("unknown1", tmp_path) == "unknown1"  # the coordinator judges ids it never saw here
