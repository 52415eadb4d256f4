"""What every benchmark imports, in one place (each part lives in the module named for it).

- `bench/coordinator_process.py`: `Coordinator`, a coordinator started as its own process on a free loopback port;
  `proc_sample` and friends, the CPU and memory it and its database use.
- `bench/databases.py`: the database a run uses (`bench_database`) and its accounts (`create_accounts`).
- `bench/rawapi.py`: `Api`, raw HTTP calls (apikey and/or RFC 9421 signature) that count every non-2xx answer.
- `bench/figures.py`: `summary` / `percentile`, `table`, and `Report`: figures printed as a table, or as JSON
  with `--json`.
- here: small images, the command line every benchmark shares, a temporary data dir.

Nothing here imports tests/: the benchmarks are their own load generators.
"""

import argparse
import asyncio
import base64
import contextlib
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image

from bench import REPO
from bench.coordinator_process import (
    CLOCK_TICKS,
    MEMORY_PROBE,
    SOURCE,
    Coordinator,
    ProcSample,
    cpu_between,
    cpu_seconds_of,
    database_cpu,
    proc_sample,
    round_trips,
    self_cpu_seconds,
)
from bench.databases import bench_database, create_accounts, is_postgres
from bench.figures import Errors, Report, fmt, machine, percentile, summary, table
from bench.rawapi import Api, request_parts

__all__ = [
    "CLOCK_TICKS",
    "MEMORY_PROBE",
    "REPO",
    "SOURCE",
    "Api",
    "Coordinator",
    "Errors",
    "ProcSample",
    "Report",
    "base_parser",
    "bench_database",
    "cpu_between",
    "cpu_seconds_of",
    "create_accounts",
    "database_cpu",
    "fmt",
    "gather_cancelling",
    "is_postgres",
    "machine",
    "now",
    "percentile",
    "proc_sample",
    "request_parts",
    "round_trips",
    "self_cpu_seconds",
    "summary",
    "table",
    "temporary_dir",
    "tiny_png_b64",
    "tiny_webp",
]

now = time.perf_counter


def tiny_webp(color: tuple[int, int, int] = (40, 120, 200), size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="WEBP")
    return buffer.getvalue()


def tiny_png_b64(size: int = 64) -> str:
    """A small source image for img2img requests."""
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (90, 90, 90)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


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
