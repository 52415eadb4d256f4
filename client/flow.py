"""The path every generation takes, shared by `horde generate`, `horde wait` and `horde demo`:
submit, wait with live progress (Ctrl-C aware), download, save with sidecars, verify."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from client.api import HordeClient
from client.errors import CoordinatorUnreachable, HordeAPIError, Interrupted, RequestFaulted, UserError
from client.output import Output
from client.progress import WaitDisplay
from client.sidecar import CoordinatorRecord, ImageFormat, SavedImage, save_generation
from client.stream import StreamUnavailable, follow
from client.verify import verify_image
from protocol.generation import GenerationRequest, RequestCheck, RequestStatus

T = TypeVar("T")
LONG_POLL_SECONDS = 20.0
# If the coordinator answers a long-poll at once without any change, don't spin: back off this long.
MIN_POLL_INTERVAL = 1.0
# The request is durable on the coordinator: while it is unreachable (a restart), keep asking, backing
# off to this many seconds between attempts.
UNREACHABLE_CAP_SECONDS = 30.0


class CtrlC(Exception):
    """Ctrl-C caught by `run_interruptibly`. Not KeyboardInterrupt: asyncio re-raises that out of the
    event loop, and the loop must keep running to cancel the request or ask the user."""


@dataclass
class WaitOptions:
    show_progress: bool = True
    cancel_on_interrupt: bool = False
    total: int | None = None


@dataclass
class SaveOptions:
    out_dir: Path
    fmt: ImageFormat = "webp"
    verify: bool = True


async def submit(client: HordeClient, request: GenerationRequest, output: Output) -> str:
    accepted = await client.generate(request)
    for warning in accepted.warnings:
        output.warn(f"{warning.message} ({warning.code})")
    return accepted.id


async def wait_for(client: HordeClient, request_id: str, display: WaitDisplay) -> RequestCheck:
    """Follow the request's event stream (steps included) until it is done or faulted; where there is
    no stream, or it breaks, long-poll `check`, updating the display on each answer."""
    with contextlib.suppress(StreamUnavailable):
        final = await streamed(client, request_id, display)
        if final.done or final.faulted:
            return final
        # A stream can end before the request does (the coordinator shutting down): keep waiting.
    check = await patient_check(client, request_id, display)  # at once, so the display has something to show
    display.update(check)
    while not (check.done or check.faulted):
        started = time.monotonic()
        previous = check
        check = await patient_check(client, request_id, display, wait=LONG_POLL_SECONDS, finished=check.finished)
        display.update(check)
        # A coordinator that ignores `wait` answers at once; poll it gently instead of hammering it.
        elapsed = time.monotonic() - started
        if check == previous and elapsed < MIN_POLL_INTERVAL:
            await asyncio.sleep(MIN_POLL_INTERVAL - elapsed)
    return check


async def streamed(client: HordeClient, request_id: str, display: WaitDisplay) -> RequestCheck:
    """The stream's final check; raises StreamUnavailable (nothing lost: the caller long-polls)."""
    async for event in follow(client.session, client.api_url, request_id):
        if event.name in ("check", "end"):
            check = RequestCheck.model_validate(event.data)
            display.update(check)
            if event.name == "end":
                return check
        elif event.name == "progress":
            display.say(f"image {event.data['index'] + 1}: step {event.data['step']}/{event.data['total']}")
    raise StreamUnavailable("no end event")


async def patient_check(client: HordeClient, request_id: str, display: WaitDisplay, **poll: Any) -> RequestCheck:
    """`check`, retried with backoff while the coordinator cannot be reached, saying so on the display."""
    attempt = 0
    while True:
        try:
            return await client.check(request_id, **poll)
        except CoordinatorUnreachable as exc:
            delay = min(UNREACHABLE_CAP_SECONDS, 2.0**attempt)
            attempt += 1
            display.say(f"coordinator unreachable ({exc.reason}); retrying in {delay:.0f} s — the request is kept")
            await asyncio.sleep(delay)


async def run_interruptibly(awaitable: Awaitable[T]) -> T:
    """Await, but turn the first Ctrl-C into `CtrlC` raised here, with the loop intact."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(awaitable)
    pressed = False

    def on_sigint() -> None:
        nonlocal pressed
        pressed = True
        task.cancel()

    try:
        loop.add_signal_handler(signal.SIGINT, on_sigint)
    except (NotImplementedError, RuntimeError, ValueError):
        return await task  # no signal handlers here (Windows, or not the main thread)
    try:
        return await task
    except asyncio.CancelledError:
        if pressed:
            raise CtrlC from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGINT)


async def wait_and_save(
    client: HordeClient,
    request_id: str,
    output: Output,
    *,
    wait: WaitOptions,
    save: SaveOptions,
    request: dict[str, Any] | None = None,
) -> list[SavedImage]:
    display = WaitDisplay(request_id, console=output.err, enabled=wait.show_progress, total=wait.total)
    try:
        with display:
            check = await run_interruptibly(wait_for(client, request_id, display))
    except CtrlC:
        await on_interrupt(client, request_id, output, wait=wait, save=save, request=request)
        raise Interrupted(f"interrupted while waiting for request {request_id}") from None
    status = await client.status(request_id)
    if check.faulted and not status.generations:
        raise RequestFaulted(f"request {request_id} faulted: no node could make its images")
    return await save_all(client, request_id, status, output, save=save, request=request)


async def on_interrupt(
    client: HordeClient,
    request_id: str,
    output: Output,
    *,
    wait: WaitOptions,
    save: SaveOptions,
    request: dict[str, Any] | None,
) -> None:
    """Carry out what Ctrl-C means here: cancel, ask, or (with nobody to ask) leave it running."""
    if wait.cancel_on_interrupt or (sys.stdin.isatty() and _confirm(f"Cancel request {request_id}? [y/N] ")):
        status = await client.cancel(request_id)
        output.note(f"cancelled request {request_id}")
        if status.generations:
            await save_all(client, request_id, status, output, save=save, request=request)
        return
    output.line(request_id)
    output.note(f"request {request_id} is still running; `horde wait {request_id}` picks it up later")


def _confirm(question: str) -> bool:
    try:
        return input(question).strip().lower() in ("y", "yes")
    except (EOFError, KeyboardInterrupt):
        print(file=sys.stderr)
        return False


async def coordinator_record(client: HordeClient, output: Output) -> CoordinatorRecord:
    """Who vouches for the job documents; an older coordinator without the endpoint gets a warning."""
    try:
        info = await client.coordinator_info()
    except HordeAPIError as exc:
        output.warn(f"the coordinator does not publish its key ({exc.rc}); images cannot be verified offline")
        return CoordinatorRecord(url=client.url, public_key=None)
    return CoordinatorRecord(url=client.url, public_key=info.public_key)


async def save_all(
    client: HordeClient,
    request_id: str,
    status: RequestStatus,
    output: Output,
    *,
    save: SaveOptions,
    request: dict[str, Any] | None,
) -> list[SavedImage]:
    coordinator = await coordinator_record(client, output)
    saved = []
    for index, generation in enumerate(status.generations):
        image = await client.download(generation.img)
        stem = f"{request_id}_{index}"
        saved.append(
            save_generation(
                save.out_dir,
                stem,
                generation,
                image,
                fmt=save.fmt,
                request_id=request_id,
                request=request,
                coordinator=coordinator,
            )
        )
    if save.verify:
        for item in saved:
            check_saved(item, output)
    return saved


def check_saved(item: SavedImage, output: Output) -> bool:
    """Verify a fresh save at once, so a bad signature is reported now rather than discovered later."""
    try:
        report = verify_image(item.image)
    except UserError as exc:
        output.warn(f"{item.image.name}: cannot verify: {exc}")
        return False
    for problem in report.problems:
        output.warn(f"{item.image.name}: {problem}")
    return report.ok
