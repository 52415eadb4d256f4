"""The `horde` CLI as a user runs it: a subprocess per command, against a real coordinator.

Images come from a small test-only node (below) that pops jobs and submits tiny WebPs with a real
node identity and signatures, so these tests need no diffusion model and stay fast.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from client.api import HordeClient
from client.errors import HordeClientError
from protocol.jobs import PopRequest, SubmitRequest
from protocol.keys import Identity
from protocol.provenance import ResultDocument, sha256_hex, sign_result
from tests.conftest import RunningCoordinator

ROOT = Path(__file__).resolve().parents[1]
MODEL = "tiny-sd"
CLI_TIMEOUT = 60.0
pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def database_url() -> None:
    """The CLI does not care which engine the coordinator uses: SQLite only, to keep these tests quick."""
    return None


# --- running the CLI -------------------------------------------------------------------------------


@dataclass
class Result:
    rc: int
    out: str
    err: str

    def json(self) -> object:
        return json.loads(self.out)


@dataclass
class Cli:
    config_dir: Path
    url: str

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HORDE_")}
        env.update(HORDE_CONFIG_DIR=str(self.config_dir), HORDE_URL=self.url, PYTHONPATH=str(ROOT))
        env.update(COLUMNS="200", **extra)
        return env

    async def start(self, *args: str, **env: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "client.cli",
            *args,
            env=self.env(**env),
            cwd=self.config_dir,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )

    async def __call__(self, *args: str, **env: str) -> Result:
        process = await self.start(*args, **env)
        out, err = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT)
        assert process.returncode is not None
        return Result(process.returncode, out.decode(), err.decode())


@pytest.fixture
def cli(coordinator: RunningCoordinator, tmp_path: Path) -> Cli:
    folder = tmp_path / "horde-config"
    folder.mkdir()
    return Cli(folder, coordinator.url)


# --- a test node -----------------------------------------------------------------------------------


def tiny_webp(seed: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (int(seed) % 256, 80, 160)).save(out, format="WEBP", quality=90)
    return out.getvalue()


async def serve_jobs(client: HordeClient, name: str) -> None:
    """Pop and answer jobs forever, as a real node would: signed, with the job's own seed."""
    assert client.identity is not None
    while True:
        popped = await client.pop(PopRequest(name=name, models=[MODEL], amount=4, wait=1.0))
        for job_id, job in zip(popped.ids, popped.jobs, strict=True):
            seed = str(job.document["payload"]["seed"])
            image = tiny_webp(seed)
            result = ResultDocument(job_id=job_id, image_sha256=sha256_hex(image), seed=seed, state="ok")
            await client.submit(
                SubmitRequest(
                    id=job_id,
                    generation=base64.b64encode(image).decode(),
                    seed=seed,
                    signature=sign_result(client.identity, result),
                )
            )


@pytest.fixture
async def node(coordinator: RunningCoordinator) -> AsyncIterator[str]:
    owner = await coordinator.create_account("node-owner")
    client = HordeClient(coordinator.url, apikey=owner.apikey, identity=Identity.generate())
    task = asyncio.create_task(serve_jobs(client, "test-node"))
    try:
        yield "test-node"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()
        if task.done() and not task.cancelled() and isinstance(task.exception(), HordeClientError):
            raise task.exception()  # type: ignore[misc]


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


# --- tests -----------------------------------------------------------------------------------------


async def test_keys_register_generate_and_verify(cli: Cli, node: str, tmp_path: Path) -> None:
    created = await cli("keys", "new")
    assert created.rc == 0, created.err
    public_key = created.out.strip()
    assert public_key.startswith("ed25519:")
    assert (cli.config_dir / "identity.key").stat().st_mode & 0o777 == 0o600
    assert (await cli("keys", "show")).out.strip() == public_key
    again = await cli("keys", "new")
    assert again.rc == 1 and "already exists" in again.err

    registered = await cli("register", "alice", "--json")
    assert registered.rc == 0, registered.err
    assert registered.json()["public_key"] == public_key  # type: ignore[index]
    assert "apikey" in (cli.config_dir / "config.toml").read_text()

    out = tmp_path / "images"
    generated = await cli(
        "generate",
        "a red fox",
        "--model",
        MODEL,
        "-n",
        "2",
        "--size",
        "64x64",
        "--steps",
        "2",
        "--seed",
        "7",
        "--out",
        str(out),
        "--json",
    )
    assert generated.rc == 0, generated.err
    images = [Path(item["file"]) for item in generated.json()["images"]]  # type: ignore[index]
    assert len(images) == 2 and all(path.suffix == ".webp" and path.exists() for path in images)
    sidecar = json.loads(images[0].with_suffix(".json").read_text())
    assert sidecar["node"]["worker_name"] == node
    assert sidecar["model"] == MODEL and sidecar["request"]["prompt"] == "a red fox"
    assert sidecar["coordinator"]["public_key"].startswith("ed25519:")
    assert sidecar["job"]["signature"] and sidecar["result"]["signature"]

    verified = await cli("verify", *map(str, images))
    assert verified.rc == 0, verified.err
    assert verified.out.count(": OK") == 2

    flip_byte(images[0])
    tampered = await cli("verify", str(images[0]))
    assert tampered.rc == 1
    assert "FAILED" in tampered.err and "SHA-256" in tampered.err
    assert "Traceback" not in tampered.err


async def test_png_output_verifies(cli: Cli, node: str, tmp_path: Path) -> None:
    generated = await cli(
        "generate", "a blue bird", "--size", "64x64", "--steps", "1", "--format", "png", "--out", str(tmp_path), "-q"
    )
    assert generated.rc == 0, generated.err
    [png] = [Path(line) for line in generated.out.split()]
    assert png.suffix == ".png" and png.with_suffix(".webp").exists()
    assert (await cli("verify", str(png), "--json")).json()["ok"] is True  # type: ignore[index]


async def test_no_wait_status_wait_and_cancel(cli: Cli, coordinator: RunningCoordinator, tmp_path: Path) -> None:
    first = await cli("generate", "queued", "--size", "64x64", "--steps", "1", "--no-wait")
    assert first.rc == 0, first.err
    request_id = first.out.strip()
    status = await cli("status", request_id, "--json")
    assert status.json()["waiting"] == 1 and status.json()["done"] is False  # type: ignore[index]
    cancelled = await cli("cancel", request_id)
    assert cancelled.rc == 0 and f"cancelled {request_id}" in cancelled.out

    second = (await cli("generate", "later", "--size", "64x64", "--steps", "1", "--no-wait")).out.strip()
    owner = await coordinator.create_account("late-node-owner")
    client = HordeClient(coordinator.url, apikey=owner.apikey, identity=Identity.generate())
    task = asyncio.create_task(serve_jobs(client, "late-node"))
    try:
        waited = await cli("wait", second, "--out", str(tmp_path), "--json")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()
    assert waited.rc == 0, waited.err
    [image] = waited.json()["images"]  # type: ignore[index]
    assert all(map(os.path.isfile, (image["file"], image["sidecar"])))


async def interrupt_after_progress(process: asyncio.subprocess.Process) -> tuple[str, str]:
    assert process.stderr is not None and process.stdout is not None
    seen = ""
    while "queued" not in seen:  # the first progress line: the wait (and its Ctrl-C handler) has begun
        line = await asyncio.wait_for(process.stderr.readline(), CLI_TIMEOUT)
        assert line, f"the CLI exited early: {seen}"
        seen += line.decode()
    process.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT)
    return out.decode(), seen + err.decode()


async def test_ctrl_c_without_a_tty_leaves_the_request_running(cli: Cli) -> None:
    process = await cli.start("generate", "slow", "--size", "64x64", "--steps", "1")
    out, err = await interrupt_after_progress(process)
    assert process.returncode == 130, err
    request_id = out.strip()
    assert "still running" in err and "Traceback" not in err
    assert (await cli("status", request_id, "--json")).json()["waiting"] == 1  # type: ignore[index]
    await cli("cancel", request_id)  # also ends the coordinator's long-poll the CLI left behind


async def test_ctrl_c_with_cancel_on_interrupt_cancels(cli: Cli) -> None:
    process = await cli.start("generate", "slow", "--size", "64x64", "--steps", "1", "--cancel-on-interrupt")
    _, err = await interrupt_after_progress(process)
    assert process.returncode == 130, err
    assert "cancelled request" in err
    request_id = err.split("cancelled request ")[1].split()[0]
    status = (await cli("status", request_id, "--json")).json()
    assert status["waiting"] == 0 and status["done"] is True  # type: ignore[index]


async def test_kudos_transfer_and_ledger_verify(cli: Cli, coordinator: RunningCoordinator) -> None:
    rich = await coordinator.create_account("rich", kudos=100)
    await coordinator.create_account("poor")
    as_rich = {"HORDE_API_KEY": rich.apikey}
    sent = await cli("transfer", "poor", "12.5", **as_rich)
    assert sent.rc == 0, sent.err
    assert "transferred 12.50 kudos to poor" in sent.out
    balance = (await cli("kudos", "--json", **as_rich)).json()
    assert balance["kudos"] == pytest.approx(87.5)  # type: ignore[index]
    assert [entry["kind"] for entry in balance["entries"]] == ["transfer", "admin"]  # type: ignore[index]
    shown = await cli("kudos", **as_rich)
    assert "87.50 kudos" in shown.out and "-12.50" in shown.out

    ledger = await cli("ledger", "verify")
    assert ledger.rc == 0, ledger.err
    assert "ledger OK: 2 entries checked; head seq 2" in ledger.out
    wrong = await cli("ledger", "verify", "--coordinator-key", Identity.generate().public_key.text())
    assert wrong.rc == 1 and "not signed" in wrong.err


async def test_workers_and_models(cli: Cli, coordinator: RunningCoordinator, node: str) -> None:
    async with HordeClient(coordinator.url) as client:
        for _ in range(200):  # the node registers with its first pop
            if await client.workers():
                break
            await asyncio.sleep(0.05)
    table = await cli("workers")
    assert table.rc == 0, table.err
    assert node in table.out and MODEL in table.out
    models = await cli("models", "--json")
    assert [model["name"] for model in models.json()] == [MODEL]  # type: ignore[union-attr]


async def test_user_errors_are_one_line(cli: Cli, tmp_path: Path) -> None:
    cases = [
        (("generate", "x", "--size", "big"), "--size must look like"),
        (("generate", "x", "--size", "100x100"), "--size: "),
        (("generate", "x", "--source-image", str(tmp_path / "nope.png")), "no such file"),
        (("verify", str(tmp_path / "missing.webp")), "cannot read"),
        (("keys", "show"), "horde keys new"),
        (("transfer", "nobody", "5"), "error: "),
        (("status", "no-such-request"), "was not found. It may have expired or never existed. (RequestNotFound)"),
        (("--url", "http://127.0.0.1:9", "models"), "error: cannot reach coordinator at http://127.0.0.1:9: "),
    ]
    results = await asyncio.gather(*(cli(*args) for args, _ in cases))
    for (args, expected), result in zip(cases, results, strict=True):
        assert result.rc != 0, args
        assert result.err.count("\n") == 1 and result.err.startswith("error: "), (args, result.err)
        assert expected in result.err, (args, result.err)
        assert result.out == "", args


async def test_cli_never_imports_torch(cli: Cli) -> None:
    code = "import sys, client.cli; sys.exit('torch' in sys.modules or 'coordinator' in sys.modules)"
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", code, env=cli.env())
    assert await process.wait() == 0
