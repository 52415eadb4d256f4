"""`horde demo "a prompt"`: the whole network on this machine, end to end, in well under a minute.

It starts a coordinator (SQLite in a temporary folder) and a node serving the tiny offline model,
registers a node owner and a requester through the API, generates through the same code path as
`horde generate`, verifies the saved images offline, and stops everything, keeping only the output.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

from client.api import HordeClient, wait_for_heartbeat
from client.context import Context
from client.demo_processes import Child, DemoError, read_port_file, run_to_end, start, stop
from client.errors import HordeClientError, UserError
from client.flow import SaveOptions, WaitOptions, submit, wait_and_save
from client.output import Output
from client.request_builder import GenerateOptions, build_request
from client.sidecar import SavedImage, ensure_folder
from client.verify import verify_image
from protocol.generation import GenerationRequest
from protocol.keys import Identity

TINY_MODEL = "tiny-sd"
MODEL_INFO_FILE = "horde-model.json"  # written last by make-tiny-model: its presence means "complete"
NODE_NAME = "demo-node"
T = TypeVar("T")


def cache_dir() -> Path:
    if os.environ.get("HORDE_CACHE_DIR"):
        return Path(os.environ["HORDE_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "horde-network"


async def run(ctx: Context) -> int:
    # Validate the flags before starting anything.
    request = build_request(
        GenerateOptions(
            prompt=ctx.args.prompt, model=TINY_MODEL, n=ctx.args.n, size=ctx.args.size, steps=ctx.args.steps
        )
    )
    out_dir = Path(ctx.args.out)
    ensure_folder(out_dir)
    save = SaveOptions(out_dir, ctx.args.format, verify=False)  # verified below, with a verdict per image
    require_node_extra()
    scratch = Path(tempfile.mkdtemp(prefix="horde-demo-"))
    succeeded = False
    try:
        saved = await _run_network(ctx.output, scratch, request, save)
        succeeded = True
    finally:
        # A failure's message points at a log in here: keep it for the user to read.
        if ctx.args.keep_temp or not succeeded:
            ctx.output.note(f"kept logs and data in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return _report(ctx.output, saved)


def require_node_extra() -> None:
    """The demo runs a node: say so before starting anything, rather than after a node crash."""
    missing = [name for name in ("torch", "diffusers") if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(
            f"`horde demo` runs a node, which needs the node extra ({', '.join(missing)} not installed): "
            "pip install -e '.[node]' (after the torch build for your machine), or run `make demo`"
        )


async def _run_network(
    output: Output, scratch: Path, request: GenerationRequest, save: SaveOptions
) -> list[SavedImage]:
    children: list[Child] = []
    try:
        output.note("starting a coordinator and preparing the tiny model …")
        coordinator, model_dir = await asyncio.gather(_start_coordinator(scratch, children), ensure_tiny_model(output))
        async with HordeClient(coordinator) as anonymous:
            owner = await anonymous.register("demo-node-owner", with_key=False)
            info = await anonymous.coordinator_info()
        output.note(f"coordinator at {coordinator} (key {info.public_key})")
        node_dir = write_node_config(scratch / "node", coordinator, owner.apikey, info.public_key, model_dir)
        children.append(await _start_node(scratch, node_dir))
        output.note(f"starting node {NODE_NAME!r} (serves {TINY_MODEL} on the CPU) …")
        return await _generate(output, coordinator, request, save, children[-1])
    finally:
        for child in reversed(children):  # the node first, so it can finish talking to the coordinator
            await stop(child)


async def _start_coordinator(scratch: Path, children: list[Child]) -> str:
    port_file = scratch / "coordinator.port"
    args = ["-m", "coordinator.cli", "serve", "--host", "127.0.0.1", "--port", "0", "--port-file", str(port_file)]
    # The data folder goes by environment: the CLI reads it whether the flag sits before or after `serve`.
    env = {"HORDE_DATA_DIR": str(scratch / "coordinator")}
    child = await start("coordinator", args, scratch / "coordinator.log", env)
    children.append(child)
    port = await read_port_file(child, port_file)
    url = f"http://127.0.0.1:{port}"
    await wait_for_heartbeat(url, within=20.0)
    return url


async def ensure_tiny_model(output: Output) -> Path:
    """The tiny model's folder in the cache, built once (into a temporary name, so never half-built)."""
    target = cache_dir() / TINY_MODEL
    if (target / MODEL_INFO_FILE).exists():
        return target
    output.note(f"building the tiny offline model into {target} (first run only)")
    target.parent.mkdir(parents=True, exist_ok=True)
    building = target.with_name(f".{TINY_MODEL}.building-{os.getpid()}")
    log = target.with_name(f".{TINY_MODEL}.build.log")  # kept only if the build fails
    try:
        await run_to_end("make-tiny-model", ["-m", "node.cli", "make-tiny-model", str(building)], log)
        log.unlink(missing_ok=True)
        if not (target / MODEL_INFO_FILE).exists():  # another demo may have finished first: keep theirs
            shutil.rmtree(target, ignore_errors=True)  # a stale, incomplete folder from an older layout
            building.rename(target)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return target


def write_node_config(folder: Path, url: str, apikey: str, coordinator_key: str, model_dir: Path) -> Path:
    """A node config file (the node's own TOML format) for one CPU node serving the tiny model."""
    folder.mkdir(parents=True, exist_ok=True)
    settings = {
        "coordinator_url": url,
        "name": NODE_NAME,
        "apikey": apikey,
        "coordinator_public_key": coordinator_key,
        "models": [TINY_MODEL],
        "device": "cpu",
        "pop_wait": 2.0,
        "shutdown_grace": 5.0,
    }
    # JSON strings and arrays of strings are also valid TOML values.
    lines = [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    lines += ["", f'[catalog."{TINY_MODEL}"]', f"source = {json.dumps(str(model_dir))}"]
    (folder / "config.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


async def _start_node(scratch: Path, node_dir: Path) -> Child:
    env = {"HORDE_NODE_CONFIG_DIR": str(node_dir)}
    args = ["-m", "node.cli", "run", "--config", str(node_dir / "config.toml"), "--log-format", "human"]
    return await start("node", args, scratch / "node.log", env)


async def _generate(
    output: Output, url: str, request: GenerationRequest, save: SaveOptions, node: Child
) -> list[SavedImage]:
    identity = Identity.generate()
    async with HordeClient(url, identity=identity) as client:
        account = await client.register("demo-requester")
        client.apikey = account.apikey
        await _unless_node_dies(_node_online(client), node, "exited before coming online")
        output.note(f"node {NODE_NAME!r} is online")
        request_id = await submit(client, request, output)
        output.note(f"requested {request.params.n} image(s) as {account.username}: {request_id}")
        wait = WaitOptions(total=request.params.n, cancel_on_interrupt=True)
        body = request.model_dump(mode="json", exclude_none=True)
        saving = wait_and_save(client, request_id, output, wait=wait, save=save, request=body)
        return await _unless_node_dies(saving, node, "exited before delivering the images")


async def _node_online(client: HordeClient) -> None:
    """Until the node has popped once (loading torch and the model takes it a few seconds)."""
    while True:
        if any(worker.name == NODE_NAME and worker.online for worker in await client.workers()):
            return
        await asyncio.sleep(0.2)


async def _unless_node_dies(work: Awaitable[T], node: Child, failure: str) -> T:
    """The work's result, or an error quoting the node's last log line if it exits first."""
    task = asyncio.ensure_future(work)
    died = asyncio.ensure_future(node.process.wait())
    try:
        await asyncio.wait({task, died}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        died.cancel()
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    raise node.failure(failure)


def _report(output: Output, saved: list[SavedImage]) -> int:
    failures = 0
    for item in saved:
        report = verify_image(item.image)
        failures += not report.ok
        status = "verified" if report.ok else "FAILED verification: " + "; ".join(report.problems)
        output.line(f"{item.image}  {status}")
    if failures:
        raise HordeClientError(f"{failures} of {len(saved)} demo images failed verification")
    output.note(f"done: {len(saved)} image(s) and sidecars in {saved[0].image.parent if saved else '?'}")
    return 0


__all__ = ["DemoError", "run"]
