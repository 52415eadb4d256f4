"""`horde-node` as a new volunteer meets it: init checks the catalog, run refuses a second daemon,
stops promptly, and every mistake is one line with a non-zero exit (real coordinator, real node)."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.first_hour_support import Proc, coordinator, node_init, run, script, user_env

pytestmark = pytest.mark.timeout(300)
EXIT_USAGE, EXIT_FORCED = 2, 130
NODE_EXTRA = ("torch", "diffusers", "transformers", "accelerate")
NO_NODE_EXTRA = f"import sys\nfor name in {NODE_EXTRA!r}:\n    sys.modules[name] = None\n"


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    with coordinator(tmp_path / "coordinator", user_env(tmp_path), tmp_path) as (_, address):
        yield address


def one_console_line(done_text: str) -> str:
    assert "Traceback" not in done_text, done_text
    lines = [line for line in done_text.splitlines() if line.strip()]
    assert len(lines) == 1, done_text
    return lines[0]


def sources(tmp_path: Path) -> dict[str, tuple[str, str]]:
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    text = tmp_path / "weights.bin"
    text.write_bytes(b"not a checkpoint")
    return {
        "missing folder": (str(tmp_path / "no-such-model"), "does not exist"),
        "folder without a model": (str(empty), "is a folder without a diffusers model (model_index.json is missing)"),
        "not a checkpoint": (str(text), "is not a .safetensors or .ckpt checkpoint"),
        "missing checkpoint": (str(tmp_path / "model.safetensors"), "does not exist"),
        "malformed hub id": ("stabilityai//sd turbo", "nor a hub id of the form owner/name"),
    }


@pytest.mark.parametrize(
    "case", ["missing folder", "folder without a model", "not a checkpoint", "missing checkpoint", "malformed hub id"]
)
def test_init_checks_each_catalog_source(tmp_path: Path, case: str) -> None:
    source, reason = sources(tmp_path)[case]
    done = node_init(tmp_path, "http://127.0.0.1:9", source)
    assert done.rc == 1
    line = one_console_line(done.both)
    assert f"catalog: model 'tiny-sd': {source} " in line and reason in line, line
    assert not (tmp_path / ".config/horde-node/config.toml").exists(), "a rejected init wrote its config"


def test_init_accepts_local_models_and_hub_ids(tmp_path: Path, tiny_model_dir: Path) -> None:
    done = node_init(
        tmp_path,
        "http://127.0.0.1:9",
        str(tiny_model_dir),
        "--catalog",
        "turbo=stabilityai/sd-turbo@stable_diffusion_2",
    )
    assert done.rc == 0, done.both
    assert "catalog" not in done.both
    assert (tmp_path / ".config/horde-node/config.toml").exists()


def test_run_with_a_missing_model_folder_says_so_before_loading(tmp_path: Path, tiny_model_dir: Path) -> None:
    assert node_init(tmp_path, "http://127.0.0.1:9", str(tiny_model_dir)).rc == 0
    missing = tmp_path / "moved-away"
    done = run(
        [script("horde-node"), "run", "--catalog", f"tiny-sd={missing}@stable_diffusion_1"],
        user_env(tmp_path),
        tmp_path,
    )
    assert done.rc == EXIT_USAGE
    line = done.one_line_error()
    assert (
        line == f"horde-node: catalog: model 'tiny-sd': {missing} does not exist; give an existing folder or "
        "checkpoint, or a hub id owner/name"
    ), line
    assert "loading" not in done.both and "Repo id" not in done.both


def test_run_without_the_node_extra_is_one_line(tmp_path: Path, tiny_model_dir: Path) -> None:
    assert node_init(tmp_path, "http://127.0.0.1:9", str(tiny_model_dir)).rc == 0
    blocker = tmp_path / "no-torch"
    blocker.mkdir()
    # An install without the extra: importing its packages fails, as where they are not installed.
    (blocker / "sitecustomize.py").write_text(NO_NODE_EXTRA)
    done = run([script("horde-node"), "run"], user_env(tmp_path, PYTHONPATH=str(blocker)), tmp_path)
    assert done.rc == EXIT_USAGE
    line = done.one_line_error()
    assert re.search(r"needs the node extra \(module '(torch|diffusers|transformers)' is missing\)", line), line
    assert "pip install -e '.[node]'" in line


def start_node(home: Path) -> Proc:
    node = Proc.start([script("horde-node"), "run"], user_env(home), home)
    node.wait_for(r"serving tiny-sd")
    return node


def test_one_daemon_per_config_and_an_idle_node_stops_at_once(tmp_path: Path, url: str, tiny_model_dir: Path) -> None:
    init = node_init(tmp_path, url, str(tiny_model_dir), "--register", "volunteer")
    assert init.rc == 0, init.both
    node = start_node(tmp_path)
    try:
        second = run([script("horde-node"), "run"], user_env(tmp_path), tmp_path)
        assert second.rc == EXIT_USAGE
        line = second.one_line_error()
        config = tmp_path / ".config/horde-node/config.toml"
        assert f"the config {config} is in use by another `horde-node run` (pid {node.process.pid})" in line, line
        # The same spool under another config is refused too.
        other = tmp_path / "other.toml"
        other.write_text(config.read_text())
        third = run(
            [script("horde-node"), "run", "--config", str(other), "--spool-dir", str(config.parent / "spool")],
            user_env(tmp_path),
            tmp_path,
        )
        assert third.rc == EXIT_USAGE and f"(pid {node.process.pid})" in third.one_line_error()
        # Idle, it is inside a 30 s long-poll (--pop-wait 30): SIGTERM must not wait for that to end.
        node.signal(signal.SIGTERM)
        assert node.wait(timeout=15) == 0, node.output
    finally:
        node.stop()
    assert "stopped · 0 done" in node.output
    # Library chatter stays off the console (transformers' torchvision notice, torch's dtype warnings).
    assert not re.search(r"torchvision|\[transformers\]|UserWarning|FutureWarning", node.output), node.output


def test_a_second_sigterm_abandons_the_job_without_a_traceback(tmp_path: Path, url: str, tiny_model_dir: Path) -> None:
    assert node_init(tmp_path, url, str(tiny_model_dir), "--register", "volunteer").rc == 0
    node = start_node(tmp_path)
    try:
        client = user_env(tmp_path, HORDE_URL=url)
        asked = run(
            [
                script("horde"),
                "generate",
                "a slow one",
                "--model",
                "tiny-sd",
                "--steps",
                "50",
                "--size",
                "512x512",
                "--no-wait",
            ],
            client,
            tmp_path,
        )
        assert asked.rc == 0, asked.both
        node.wait_for(r"step \d+/50")
        node.signal(signal.SIGTERM)
        node.wait_for(r"stopping: finishing 1 job")
        node.signal(signal.SIGTERM)
        assert node.wait() == EXIT_FORCED, node.output
    finally:
        node.stop()
    assert "faulted: the node was stopped before finishing this job" in node.output
    assert "Traceback" not in node.output and "never retrieved" not in node.output, node.output


def test_lock_file_names_no_one_after_the_node_exits(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The lock is the kernel's: a daemon that died leaves nothing that blocks the next one."""
    from node.lock import exclusive, folder_lock

    lock = folder_lock(tmp_path / "spool")
    with exclusive(lock, "the spool"):
        assert lock.read_text().strip() == str(os.getpid())
    with exclusive(lock, "the spool"):
        pass
