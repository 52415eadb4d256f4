"""`horde demo` end to end: a real coordinator and a real node (tiny model, CPU) as subprocesses."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(180)


async def run_cli(*args: str, env: dict[str, str], limit: float = 150.0) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "client.cli",
        *args,
        env=env,
        cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), limit)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_demo_runs_end_to_end(tiny_model_dir: Path, tmp_path: Path) -> None:
    cache, scratch, out = tmp_path / "cache", tmp_path / "tmp", tmp_path / "out"
    cache.mkdir()
    scratch.mkdir()
    (cache / "tiny-sd").symlink_to(tiny_model_dir)  # the session's model stands in for the cached build
    env = {key: value for key, value in os.environ.items() if not key.startswith("HORDE_")}
    env.update(
        HORDE_CACHE_DIR=str(cache),
        HORDE_CONFIG_DIR=str(tmp_path / "config"),
        TMPDIR=str(scratch),
        PYTHONPATH=str(ROOT),
    )

    rc, stdout, stderr = await run_cli(
        "demo", "a lighthouse at dusk", "--out", str(out), "-n", "2", "--steps", "2", "--size", "64x64", env=env
    )

    assert rc == 0, stderr
    assert stdout.count("verified") == 2, stdout
    images = sorted(out.glob("*.webp"))
    assert len(images) == 2 and all(image.with_suffix(".json").exists() for image in images)
    sidecar = json.loads(images[0].with_suffix(".json").read_text())
    assert sidecar["model"] == "tiny-sd" and sidecar["node"]["worker_name"] == "demo-node"
    assert list(scratch.iterdir()) == []  # the coordinator's data and the logs are gone
    assert not (tmp_path / "config").exists()  # the demo never touches the user's own config

    verify_rc, verify_out, verify_err = await run_cli("verify", *map(str, images), env=env)
    assert verify_rc == 0, verify_err
    assert verify_out.count(": OK") == 2
