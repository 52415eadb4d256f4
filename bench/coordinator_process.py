"""The coordinator under test as its own process, and what it and its database cost.

- `Coordinator`: `python -m coordinator.cli serve` on a free loopback port, in a temporary data dir, without
  rate limits, so the load generator never shares its event loop.
- `proc_sample`: a process's CPU seconds (/proc/PID/stat utime+stime) and memory (/proc/PID/status VmRSS, VmHWM);
  `database_cpu` / `cpu_between` the same for the PostgreSQL backends serving it; `round_trips` its
  database round trips by endpoint.
"""

import asyncio
import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from bench import REPO
from bench.databases import is_postgres

# Run the coordinator from another checkout (before/after comparisons of a change): HORDE_BENCH_SOURCE=/path.
SOURCE = Path(os.environ.get("HORDE_BENCH_SOURCE") or REPO).resolve()
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class ProcSample:
    cpu_seconds: float  # user + system, all threads
    rss_kb: int  # resident now
    hwm_kb: int  # peak resident since the process started


def proc_sample(pid: int) -> ProcSample:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # fields[0] is field 3 (state); utime is 14, stime 15
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    memory = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            memory[name] = int(value.split()[0])
    return ProcSample(cpu, memory.get("VmRSS", 0), memory.get("VmHWM", 0))


def cpu_seconds_of(pids: Iterable[int]) -> dict[int, float]:
    """CPU seconds (user + system) of each process still running."""
    seconds = {}
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            seconds[pid] = proc_sample(pid).cpu_seconds
    return seconds


async def database_cpu(url: str | None) -> dict[int, float] | None:
    """CPU seconds of each PostgreSQL server process serving the database at `url` (not this query's own), when
    the server runs on this machine; None otherwise (SQLite runs inside the coordinator, whose CPU counts it).
    Take two samples and `cpu_between` them: a backend that ended between the two is lost, so the coordinator's
    pool keeps its connections open for the benchmark (asyncpg closes idle ones only after 5 minutes)."""
    if not is_postgres(url) or urlsplit(url).hostname not in ("127.0.0.1", "localhost", "::1", None):
        return None
    import asyncpg

    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await connection.close()
    return cpu_seconds_of(row["pid"] for row in rows)


def cpu_between(before: dict[int, float] | None, after: dict[int, float] | None) -> float | None:
    """CPU seconds spent between two `database_cpu` samples (a process started since counts whole)."""
    if before is None or after is None:
        return None
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


async def round_trips(url: str) -> dict[str, float] | None:
    """The coordinator's `horde_db_round_trips` by endpoint, from its /metrics (None: code without the metric)."""
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as response:
        text = await response.text()
    trips: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("horde_db_round_trips_total{"):
            labels, _, value = line.rpartition(" ")
            endpoint = labels.split('endpoint="', 1)[1].rsplit('"', 1)[0]
            trips[endpoint] = float(value)
    return trips or None


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# Runs the coordinator with two signals for measuring the memory its Python objects hold: SIGUSR1 starts
# tracemalloc, SIGUSR2 writes the bytes traced since (still allocated) to $HORDE_BENCH_MEMORY_FILE and stops.
# tracemalloc sees Python's allocations only: SQLite's page cache (C allocations) is not among them.
MEMORY_PROBE = """
import os, runpy, signal, sys, tracemalloc
def start(*_):
    tracemalloc.start()
def report(*_):
    path = os.environ["HORDE_BENCH_MEMORY_FILE"]
    with open(path + ".tmp", "w") as out:
        out.write(str(tracemalloc.get_traced_memory()[0]))
    tracemalloc.stop()
    os.replace(path + ".tmp", path)
signal.signal(signal.SIGUSR1, start)
signal.signal(signal.SIGUSR2, report)
sys.argv[0] = "coordinator.cli"
runpy.run_module("coordinator.cli", run_name="__main__")
"""


class Coordinator:
    """`python -m coordinator.cli serve` in its own process, on a free loopback port.

    `profile`: None, "py-spy" (sampling, needs `pip install py-spy`) or "cprofile"; the profile is written to
    `profile_out` when the coordinator stops. `python_memory`: run it under MEMORY_PROBE (`trace_python_memory`).
    """

    def __init__(
        self,
        data_dir: Path,
        db: str | None = None,
        extra_args: Sequence[str] = (),
        profile: str | None = None,
        profile_out: Path | None = None,
        python_memory: bool = False,
    ) -> None:
        self.data_dir = data_dir
        self.python_memory = python_memory
        self.db = db
        self.extra_args = list(extra_args)
        self.profile = profile
        self.profile_out = profile_out
        self.process: subprocess.Popen[bytes] | None = None
        self.pid = 0
        self.port = 0
        self.log_path = data_dir / "coordinator.log"
        self.memory_file = data_dir / "python-memory"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def global_args(self) -> list[str]:
        return ["--data-dir", str(self.data_dir), *(["--db", self.db] if self.db else [])]

    def command(self, port_file: Path) -> list[str]:
        serve = [
            *self.global_args(),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--port-file",
            str(port_file),
            # Benchmarks measure the broker, not one account's queue cap (a later --concurrency in extra_args wins).
            "--no-rate-limits",
            "--uptime-kudos",
            "0",
            "--concurrency",
            "1000000",
            *self.extra_args,
        ]
        if self.profile == "cprofile":
            return [sys.executable, "-m", "cProfile", "-o", str(self.profile_out), "-m", "coordinator.cli", *serve]
        python = [sys.executable, *(["-c", MEMORY_PROBE] if self.python_memory else ["-m", "coordinator.cli"]), *serve]
        if self.profile == "py-spy":
            spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            record = ["record", "--rate", "250", "--threads", "--format", "raw", "-o", str(self.profile_out)]
            return [spy, *record, "--", *python]
        return python

    def start(self, timeout: float = 60.0) -> "Coordinator":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        port_file = self.data_dir / f"port-{uuid.uuid4().hex[:8]}"
        path = os.pathsep.join(filter(None, [str(SOURCE), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path, "HORDE_BENCH_MEMORY_FILE": str(self.memory_file)}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(port_file),
                cwd=SOURCE,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"coordinator did not start; its log:\n{self.log_tail()}")
            time.sleep(0.05)
        self.port = int(port_file.read_text())
        self.pid = self._python_pid()
        return self

    def _python_pid(self) -> int:
        """The coordinator's own pid (under py-spy, the profiler's child)."""
        assert self.process is not None
        if self.profile != "py-spy":
            return self.process.pid
        for _ in range(100):
            for task in Path(f"/proc/{self.process.pid}/task").iterdir():
                children = (task / "children").read_text().split()
                if children:
                    return int(children[0])
            time.sleep(0.05)
        raise RuntimeError("could not find the coordinator under py-spy")

    def sample(self) -> ProcSample:
        return proc_sample(self.pid)

    def trace_python_memory(self) -> None:
        """Start counting the memory the coordinator's Python objects take from now on (`python_memory`)."""
        os.kill(self.pid, signal.SIGUSR1)

    async def traced_python_bytes(self, timeout: float = 30.0) -> int:
        """Bytes allocated by Python since `trace_python_memory` and still held; tracing stops."""
        self.memory_file.unlink(missing_ok=True)
        os.kill(self.pid, signal.SIGUSR2)
        deadline = time.monotonic() + timeout
        while not self.memory_file.exists():
            if time.monotonic() > deadline:
                raise RuntimeError("the coordinator did not report its Python memory")
            await asyncio.sleep(0.05)
        return int(self.memory_file.read_text())

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds. The coordinator's graceful stop waits for parked long-polls
        (up to 30 s), so the default grace is short, except under cProfile, which writes its profile only on a clean
        exit (py-spy writes its own when the process ends either way)."""
        if self.process is None or self.process.poll() is not None:
            return
        grace = grace if grace is not None else 45.0 if self.profile == "cprofile" else 3.0
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid or self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
