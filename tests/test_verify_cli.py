"""`horde verify IMAGE --checks` and `horde kudos` with verified work (issue 17): the requester's own CLI, run as
a process, generates an image that a cheater makes; the check catches it, and `horde verify --checks` says
so, naming the nodes that re-ran the job, with the verdicts' signatures checked against the coordinator's
key. An honest image says it passed; `horde kudos` shows held and available kudos."""

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from tests.verify_support import Network, network

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.timeout(240)]


@pytest.fixture
def database_url() -> None:
    """The CLI does not care which engine the coordinator uses: SQLite only (the checks run on both elsewhere)."""
    return None


async def horde(net: Network, home: Path, apikey: str, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HORDE_")}
    env.update(
        HORDE_CONFIG_DIR=str(home),
        HORDE_URL=net.coordinator.url,
        HORDE_API_KEY=apikey,
        PYTHONPATH=str(ROOT),
        COLUMNS="200",
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "client.cli",
        *args,
        env=env,
        cwd=home,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    return process.returncode or 0, out.decode(), err.decode()


async def generated(net: Network, home: Path, seed: str, *nodes: str) -> Path:
    """`horde generate` as a process, while the named nodes serve the image and its checks in turn."""
    apikey = net.payer.apikey or ""
    command = asyncio.ensure_future(
        horde(
            net,
            home,
            apikey,
            "generate",
            "a cat",
            "--model",
            "tiny-sd",
            "--size",
            "64x64",
            "--steps",
            "8",
            "--seed",
            seed,
            "--out",
            str(home),
            "--json",
        )
    )
    for name in nodes:
        while (reply := await net.nodes[name].serve_one(wait=1.0)) is None:
            assert not command.done(), command.result()
        assert reply.status == 200, reply.body
    rc, out, err = await command
    assert rc == 0, err
    return Path(json.loads(out)["images"][0]["file"])


async def test_verify_shows_who_checked_an_image(tmp_path: Path, database_url: None, tiny_model_dir: Path) -> None:
    async with network(tmp_path, database_url, tiny_model_dir, "seed", on_jobs={1}) as net:
        home = tmp_path / "home"
        home.mkdir()
        apikey = net.payer.apikey or ""
        honest = await generated(net, home, "5", "cheater", "f32")  # job 0: honest, and its check agrees
        rc, out, err = await horde(net, home, apikey, "verify", str(honest), "--checks")
        assert rc == 0, err
        assert "node cheater PASS against f32" in out, out

        cheated = await generated(net, home, "6", "cheater", "f32", "bf16")  # job 1: another seed's image
        rc, out, err = await horde(net, home, apikey, "verify", str(cheated), "--checks")
        assert rc == 0, err  # the file is what the node signed; the check is what says it is not the job's image
        assert "node cheater FAIL against f32" in out and "bf16" in out, out
        assert "cpu/bfloat16" in out  # the class each comparison was made across

        shown = await horde(net, home, net.owners["cheater"].apikey, "kudos", "--json")
        assert json.loads(shown[1])["held_kudos"] == 0  # forfeited
        rc, out, err = await horde(net, home, net.owners["f32"].apikey, "kudos")
        assert rc == 0 and "0.00 kudos available" in out and "held in escrow" in out, (out, err)


async def test_verify_refuses_a_verdict_signed_by_another_key(
    tmp_path: Path, database_url: None, tiny_model_dir: Path
) -> None:
    async with network(tmp_path, database_url, tiny_model_dir) as net:
        home = tmp_path / "home"
        home.mkdir()
        image = await generated(net, home, "5", "cheater", "f32")
        async with net.coordinator.broker.services.database.transaction() as tx:  # an edited verdict
            rows = await tx.driver.fetchall("SELECT id, info FROM verdicts")
            for row in rows:
                edited = row["info"].replace('"outcome":"pass"', '"outcome":"fail"')
                await tx.driver.execute("UPDATE verdicts SET info = ? WHERE id = ?", (edited, row["id"]))
        rc, out, err = await horde(net, home, net.payer.apikey or "", "verify", str(image), "--checks")
        assert rc == 1 and "does not verify" in err, (out, err)
