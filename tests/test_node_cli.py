"""`horde-node init | show-config | make-tiny-model | run` as an operator uses them."""

import asyncio
import os
import signal
import stat
import tomllib
from pathlib import Path

import pytest

from node import cli
from node.config import load_config
from node.daemon import EXIT_FORCED, EXIT_OK, NodeDaemon
from tests.conftest import RunningCoordinator
from tests.helpers import Api
from tests.node_support import (
    Gate,
    RecordingConsole,
    node_config,
    request_images,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


async def test_init_registers_pins_and_writes_a_private_config(coordinator: RunningCoordinator, tmp_path: Path) -> None:
    folder = tmp_path / "node"
    argv = [
        "init",
        "--config",
        str(folder / "config.toml"),
        "--coordinator-url",
        coordinator.url,
        "--register",
        "carol",
        "--name",
        "carols-node",
        "--models",
        "tiny-sd",
        "--queue-size",
        "2",
    ]
    assert await asyncio.to_thread(cli.main, argv) == 0

    text = (folder / "config.toml").read_text()
    values = tomllib.loads(text)
    assert values["coordinator_public_key"] == coordinator.public_key.text()
    assert values["name"] == "carols-node" and values["queue_size"] == 2
    assert stat.S_IMODE((folder / "config.toml").stat().st_mode) == 0o600
    assert stat.S_IMODE((folder / "node.key").stat().st_mode) == 0o600
    owner = await Api(coordinator.url, apikey=values["apikey"]).get("/v2/find_user")
    assert owner.status == 200 and owner.body["username"].startswith("carol#")

    # Re-running init keeps what is there and refuses a coordinator whose key changed.
    argv = ["init", "--config", str(folder), "--coordinator-public-key", "ed25519:" + "A" * 43]
    assert await asyncio.to_thread(cli.main, argv) == 1
    assert (folder / "config.toml").read_text() == text


def test_init_without_a_coordinator_still_writes_the_config(tmp_path: Path) -> None:
    assert cli.main(["init", "--config", str(tmp_path), "--coordinator-url", "http://127.0.0.1:9"]) == 0
    config = load_config(tmp_path / "config.toml")
    assert config.coordinator_public_key is None and config.key_path and config.key_path.exists()


def test_bad_settings_exit_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["show-config", "--config", str(tmp_path), "--threads", "zero"]) == 2
    assert "threads" in capsys.readouterr().err


def test_show_config_reflects_env_and_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HORDE_NODE_CONFIG_DIR", str(tmp_path))
    monkeypatch.setenv("HORDE_NODE_MAX_PIXELS", "1048576")
    assert cli.main(["show-config", "--nsfw", "--catalog", "m=org/m"]) == 0
    values = tomllib.loads(capsys.readouterr().out)
    assert values["max_pixels"] == 1048576 and values["nsfw"] is True
    assert values["catalog"]["m"]["source"] == "org/m"


def test_make_tiny_model_can_add_itself_to_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import node.tiny_model

    def fake_build(path: Path) -> Path:
        path.mkdir(parents=True)
        return path

    monkeypatch.setattr(node.tiny_model, "build_tiny_model", fake_build)
    cli.main(["init", "--config", str(tmp_path), "--coordinator-url", "http://127.0.0.1:9"])
    assert cli.main(["make-tiny-model", str(tmp_path / "tiny"), "--config", str(tmp_path), "--add-to-config"]) == 0
    config = load_config(tmp_path / "config.toml")
    assert config.models == ["tiny-sd"]
    assert config.catalog_table()["tiny-sd"]["source"] == str(tmp_path / "tiny")


async def test_sigterm_finishes_the_job_in_hand_and_a_second_abandons_it(
    coordinator: RunningCoordinator, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """`horde-node run`'s signal handling, in this process (a subprocess would spend its time importing torch)."""
    requester = await coordinator.create_account("requester", kudos=100)
    owner = await coordinator.create_account("owner")
    api = Api(coordinator.url, apikey=requester.apikey)
    for signals, code, state in ((1, EXIT_OK, "ok"), (2, EXIT_FORCED, "faulted")):
        gate = Gate()
        config = node_config(
            tmp_path / str(signals), coordinator.url, owner.apikey, tiny_model_dir, name=f"node-{signals}"
        )
        daemon = NodeDaemon(config, console=RecordingConsole(), generator_factory=gate.factory())
        await request_images(api)
        task = asyncio.create_task(cli._run_with_signals(daemon, daemon.console))
        try:
            await gate.wait_started()
            for _ in range(signals):
                os.kill(os.getpid(), signal.SIGTERM)
                await asyncio.sleep(0.2)
            if signals == 1:
                assert not task.done()  # still finishing the job in hand
            gate.release.set()
            assert await asyncio.wait_for(task, 20) == code
        finally:
            gate.release.set()
        assert daemon.stats.jobs_submitted == 1 and len(daemon.spool) == 0
        assert (daemon.jobs_done, daemon.jobs_faulted) == ((1, 0) if state == "ok" else (0, 1))
