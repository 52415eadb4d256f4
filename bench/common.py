"""Shared parts of the benchmarks.

- `Coordinator`: a coordinator started as its own process (`python -m coordinator.cli serve`) on a free
  loopback port, in a temporary data dir, without rate limits, so the load generator never shares its event loop.
- `proc_sample`: a process's CPU seconds (/proc/PID/stat utime+stime) and memory (/proc/PID/status VmRSS, VmHWM).
- `Api`: raw HTTP calls (apikey and/or RFC 9421 signature) that count every non-2xx answer by status and rc.
- `summary` / `percentile`, and `Report`: figures printed as a table, or as JSON with `--json`.

Nothing here imports tests/: the benchmarks are their own load generators.
"""

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from PIL import Image

from protocol.extensions import HEADER
from protocol.httpsig import sign_request
from protocol.keys import Identity

REPO = Path(__file__).resolve().parents[1]
# Run the coordinator from another checkout (before/after comparisons of a change): HORDE_BENCH_SOURCE=/path.
SOURCE = Path(os.environ.get("HORDE_BENCH_SOURCE") or REPO).resolve()
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
now = time.perf_counter


# --- images -----------------------------------------------------------------------------
def tiny_webp(color: tuple[int, int, int] = (40, 120, 200), size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="WEBP")
    return buffer.getvalue()


def tiny_png_b64(size: int = 64) -> str:
    """A small source image for img2img requests."""
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (90, 90, 90)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


# --- the coordinator's process ----------------------------------------------------------
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
            *self.global_args(), "serve", "--host", "127.0.0.1", "--port", "0", "--port-file", str(port_file),
            # Benchmarks measure the broker, not one account's queue cap (a later --concurrency in extra_args wins).
            "--no-rate-limits", "--uptime-kudos", "0", "--concurrency", "1000000", *self.extra_args,
        ]  # fmt: skip
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
                self.command(port_file), cwd=SOURCE, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
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


# --- databases and accounts -------------------------------------------------------------
def is_postgres(url: str | None) -> bool:
    return url is not None and url.startswith(("postgresql://", "postgres://"))


@contextlib.asynccontextmanager
async def bench_database(url: str | None) -> AsyncIterator[str | None]:
    """None for SQLite in the data dir; for a postgresql:// URL, a fresh database on that server, dropped after."""
    if not is_postgres(url):
        yield url
        return
    import asyncpg

    assert url is not None
    name = f"horde_bench_{uuid.uuid4().hex[:12]}"
    parts = urlsplit(url)
    admin = await asyncpg.connect(url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def create_accounts(data_dir: Path, db: str | None, names: Iterable[str], kudos: float) -> dict[str, str]:
    """Accounts with kudos, made through the coordinator's own Bank before the server starts (as
    `coordinator.cli user add NAME --kudos N` does, without a process per account). Returns name → apikey."""
    from coordinator.app import open_services
    from coordinator.bank import Bank
    from coordinator.config import CoordinatorConfig

    services = await open_services(CoordinatorConfig(data_dir=data_dir, database=db))
    bank = Bank(services)
    keys = {}
    try:
        for name in names:
            account, apikey = await bank.open_account(name)
            if kudos:
                await bank.grant(account.id, kudos)
            keys[name] = apikey
    finally:
        await services.database.close()
    return keys


# --- HTTP -------------------------------------------------------------------------------
@dataclass
class Errors:
    """Every answer that was not 2xx, by `label status rc`, and every exception, by type."""

    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def add(self, key: str, example: Any) -> None:
        self.counts[key] += 1
        self.examples.setdefault(key, str(example)[:300])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.total, "by_kind": dict(self.counts), "examples": self.examples}


class Api:
    """One shared session; each call names its caller (apikey, identity) and a label for the error counts."""

    def __init__(self, base_url: str, errors: Errors, *, timeout: float = 60.0, local_address: str | None = None
                 ) -> None:  # fmt: skip
        self.base = base_url.rstrip("/") + "/api"
        self.errors = errors
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.session: aiohttp.ClientSession | None = None
        # Connect from this loopback address (127.0.0.2, …): the coordinator limits connections and
        # long-polls per address, and a real network's nodes come from many.
        self.local_address = local_address

    async def __aenter__(self) -> "Api":
        local = (self.local_address, 0) if self.local_address else None
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None, force_close=False, local_addr=local)
        self.session = aiohttp.ClientSession(connector=connector, timeout=self.timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.session is not None
        await self.session.close()

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        label: str,
        apikey: str | None = None,
        identity: Identity | None = None,
        expected: tuple[int, ...] = (),
    ) -> tuple[int, Any]:
        """(status, parsed JSON); status 0 on a connection error. Non-2xx answers not in `expected` are counted."""
        assert self.session is not None
        url = self.base + path
        raw = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
        # Our own extensions (pop's signed `jobs`), as our node and CLI ask for them.
        headers = {"Content-Type": "application/json", "Client-Agent": "horde-bench:1:local", HEADER: "1"}
        if apikey:
            headers["apikey"] = apikey
        if identity is not None:
            headers.update(sign_request(identity, method, url, raw))
        try:
            async with self.session.request(method, url, data=raw or None, headers=headers) as response:
                text = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as error:
            self.errors.add(f"{label} exception {type(error).__name__}", error)
            return 0, None
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = text.decode(errors="replace")
        if not 200 <= status < 300 and status not in expected:
            rc = parsed.get("rc") if isinstance(parsed, dict) else None
            self.errors.add(f"{label} {status} {rc}", parsed)
        return status, parsed


# --- figures ----------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); `values` need not be sorted."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(seconds: Sequence[float]) -> dict[str, float | int]:
    """Count and p50/p95/p99/max/mean, in milliseconds."""
    if not seconds:
        return {"n": 0}
    ms = [value * 1000 for value in seconds]
    return {
        "n": len(ms), "p50": round(percentile(ms, 50), 2), "p95": round(percentile(ms, 95), 2),
        "p99": round(percentile(ms, 99), 2), "max": round(max(ms), 2), "mean": round(sum(ms) / len(ms), 2),
    }  # fmt: skip


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return "-" if value is None else str(value)


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[fmt(value) for value in row] for row in rows]
    widths = [max(len(h), *(len(row[i]) for row in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))
    out = [title, line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(out)


def machine() -> dict[str, Any]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpus": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(), "platform": platform.platform(), "commit": commit or None,
    }  # fmt: skip


@dataclass
class Report:
    """What a benchmark found: tables for people, one JSON document for machines, an exit status for CI."""

    benchmark: str
    config: dict[str, Any]
    results: dict[str, Any] = field(default_factory=dict)
    tables: list[str] = field(default_factory=list)
    errors: Errors = field(default_factory=Errors)
    problems: list[str] = field(default_factory=list)  # sanity failures (short mode)
    notes: list[str] = field(default_factory=list)
    load_at_start: list[float] = field(default_factory=lambda: [round(x, 2) for x in os.getloadavg()])

    def emit(self, as_json: bool) -> int:
        host = machine() | {"load_average_at_start": self.load_at_start}
        document = {
            "benchmark": self.benchmark, "machine": host, "config": self.config, "results": self.results,
            "errors": self.errors.as_dict(), "problems": self.problems, "notes": self.notes,
        }  # fmt: skip
        text = "\n\n".join(self.tables)
        text += (
            f"\n\nload average (1 min) at start {self.load_at_start[0]}, at end {host['load_average'][0]}"
            f" on {host['cpus']} CPUs"
        )
        if self.notes:
            text += "\n\n" + "\n".join(f"note: {note}" for note in self.notes)
        if self.errors.total:
            text += "\n\nERRORS:\n" + "\n".join(
                f"  {count:6d}  {kind}   e.g. {self.errors.examples[kind]}"
                for kind, count in self.errors.counts.items()
            )
        if self.problems:
            text += "\n\nPROBLEMS:\n" + "\n".join(f"  {problem}" for problem in self.problems)
        if as_json:
            print(text, file=sys.stderr)
            print(json.dumps(document, indent=2))
        else:
            print(text)
        return 1 if self.errors.total or self.problems else 0


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--short", action="store_true", help="a few seconds, sanity only (CI)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON on stdout (tables on stderr)")
    parser.add_argument("--db", help="a postgresql:// server URL: run on a fresh database there (default: SQLite)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data dir")
    return parser


@contextlib.contextmanager
def temporary_dir(keep: bool, prefix: str) -> Any:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if keep:
            print(f"data kept in {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


async def gather_cancelling(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
