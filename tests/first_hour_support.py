"""What the first-hour tests share: the installed console scripts, run as a user runs them.

Every command is a subprocess of the script pip installed next to this interpreter (`.venv/bin/horde`,
...), in a scratch home with no HORDE_* settings of the developer's, so nothing here depends on the
folder pytest runs in. Long-running commands (`serve`, `horde-node run`) are `Proc`s whose output is
read by a thread; tests wait on a line appearing, never on a sleep.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COMMAND_TIMEOUT = 120.0  # a 2-core CI machine importing torch while other tests run


def script(name: str) -> str:
    path = BIN / name
    assert path.exists(), f"{path} is missing: install the project into this environment (make install)"
    return str(path)


def user_env(home: Path, **extra: str) -> dict[str, str]:
    """A fresh user's environment: own home and XDG folders, none of the caller's HORDE_* settings."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HORDE_", "XDG_"))}
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_DATA_HOME=str(home / ".local/share"),
        XDG_CACHE_HOME=str(home / ".cache"),
        COLUMNS="200",
        PYTHONUNBUFFERED="1",
    )
    # Hub lookups can never succeed here; fail at once rather than after a network timeout.
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **extra)
    if "PYTHONPATH" in extra and os.environ.get("PYTHONPATH"):  # add to the caller's, don't replace it
        env["PYTHONPATH"] = os.pathsep.join((extra["PYTHONPATH"], os.environ["PYTHONPATH"]))
    return env


@dataclass
class Done:
    rc: int
    out: str
    err: str

    @property
    def both(self) -> str:
        return self.out + self.err

    def one_line_error(self) -> str:
        """The single stderr line a user mistake must produce (and no traceback)."""
        assert self.rc != 0, f"expected a failure:\n{self.both}"
        assert "Traceback" not in self.both, self.both
        lines = [line for line in self.err.splitlines() if line.strip()]
        assert len(lines) == 1, f"expected one line on stderr, got:\n{self.err}"
        return lines[0]


def run(args: list[str], env: Mapping[str, str], cwd: Path, timeout: float = COMMAND_TIMEOUT) -> Done:
    done = subprocess.run(
        args, env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    return Done(done.returncode, done.stdout, done.stderr)


@dataclass
class Proc:
    """A long-running command; `lines` fills as it prints (stdout and stderr together)."""

    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition)

    @classmethod
    def start(cls, args: list[str], env: Mapping[str, str], cwd: Path) -> Proc:
        process = subprocess.Popen(
            args,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        proc = cls(process)
        threading.Thread(target=proc._read, daemon=True).start()
        return proc

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = COMMAND_TIMEOUT) -> re.Match[str]:
        """The first line matching `pattern`; fails (with the output) if the process ends or time runs out."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            seen = 0
            while True:
                for line in self.lines[seen:]:
                    if match := regex.search(line):
                        return match
                seen = len(self.lines)
                remaining = deadline - time.monotonic()
                assert self.process.poll() is None or seen < len(self.lines), (
                    f"exited ({self.process.returncode}) before printing {pattern!r}:\n{''.join(self.lines)}"
                )
                assert remaining > 0, f"no {pattern!r} within {timeout:g} s:\n{''.join(self.lines)}"
                self._changed.wait(min(remaining, 1.0))

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = COMMAND_TIMEOUT) -> int:
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get_json(url: str, apikey: str | None = None) -> object:
    request = urllib.request.Request(url, headers={"apikey": apikey} if apikey else {})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


@contextmanager
def coordinator(data_dir: Path, env: Mapping[str, str], cwd: Path, port: int = 0) -> Iterator[tuple[Proc, str]]:
    """`horde-coordinator --data-dir D serve ...` (tests/test_first_hour_coordinator.py puts it after `serve`)."""
    port_file = cwd / f"coordinator-{time.monotonic_ns()}.port"
    proc = Proc.start(
        [
            script("horde-coordinator"),
            "--data-dir",
            str(data_dir),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--port-file",
            str(port_file),
        ],
        env,
        cwd,
    )
    try:
        proc.wait_for(r"listening on http://")
        yield proc, f"http://127.0.0.1:{port_file.read_text().strip()}"
    finally:
        proc.stop()


def node_init(home: Path, url: str, source: str, *extra: str, name: str = "my-node") -> Done:
    env = user_env(home)
    catalog = f"tiny-sd={source}@stable_diffusion_1"
    return run(
        [
            script("horde-node"),
            "init",
            "--coordinator-url",
            url,
            "--name",
            name,
            "--models",
            "tiny-sd",
            "--catalog",
            catalog,
            "--pop-wait",
            "30",
            *extra,
        ],
        env,
        home,
    )
