"""Child processes of `horde demo`: start a coordinator or node by its module's CLI, watch, stop.

The client never imports coordinator or node code: they run as `python -m coordinator.cli` and
`python -m node.cli`, each in its own session so Ctrl-C reaches only us and we stop them in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from client.errors import HordeClientError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
STOP_GRACE_SECONDS = 10.0


class DemoError(HordeClientError):
    pass


@dataclass
class Child:
    name: str
    process: asyncio.subprocess.Process
    log: Path

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    def failure(self, what: str) -> DemoError:
        """An error naming the child's last log line, which usually says what went wrong."""
        last = next((line for line in reversed(self.tail().splitlines()) if line.strip()), "no output")
        return DemoError(f"{self.name} {what} (exit {self.process.returncode}): {last.strip()} — log: {self.log}")


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Our environment, with this checkout importable so `python -m coordinator.cli` works from any folder."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra or {})
    return env


async def start(name: str, args: list[str], log: Path, env: dict[str, str] | None = None) -> Child:
    handle = log.open("wb")
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=handle,
            stderr=asyncio.subprocess.STDOUT,
            env=child_env(env),
            start_new_session=True,
        )
    finally:
        handle.close()  # the child holds its own copy of the descriptor
    return Child(name=name, process=process, log=log)


async def run_to_end(name: str, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
    child = await start(name, args, log, env)
    try:
        await child.process.wait()
    finally:
        await stop(child)
    if child.process.returncode != 0:
        raise child.failure("failed")


async def stop(child: Child) -> None:
    """SIGTERM, then SIGKILL after a grace period; safe to call on a child that has already exited."""
    if not child.running:
        return
    with contextlib.suppress(ProcessLookupError):
        child.process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(child.process.wait(), STOP_GRACE_SECONDS)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            child.process.kill()
        await child.process.wait()


async def read_port_file(child: Child, path: Path, within: float = 30.0) -> int:
    """The port the coordinator bound (it writes it once listening); fails fast if it dies first."""
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        if not child.running:
            raise child.failure("exited during startup")
        port = _port_in(path)
        if port is not None:
            return port
        await asyncio.sleep(0.05)
    raise DemoError(f"{child.name} did not report its port within {within:g} s — log: {child.log}")


def _port_in(path: Path) -> int | None:
    """The port once the file holds a whole number (it may not exist yet, or be mid-write)."""
    try:
        text = path.read_text(encoding="ascii").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
