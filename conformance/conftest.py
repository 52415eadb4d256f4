"""Fixtures of the conformance suite: a live coordinator (conformance/live.py, in the project's own
environment) that horde-sdk 0.33.3, on this Python 3.12 interpreter, talks to over loopback HTTP.

`live` is parametrized over SQLite and PostgreSQL (PostgreSQL runs when HORDE_TEST_POSTGRES_DSN is
set; CI always sets it). Each test gets its own coordinator, database and accounts.
"""

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# horde-sdk's strict mode (its models forbid fields AI Horde does not define): set before it is imported.
os.environ["TESTS_ONGOING"] = "1"

from conformance.sdk import Live, point_sdk_at

ROOT = Path(__file__).resolve().parent.parent
# The project's interpreter, which runs the coordinator (`make conformance` passes it).
PROJECT_PYTHON = os.environ.get("HORDE_PROJECT_PYTHON", str(ROOT / ".venv" / "bin" / "python"))
ENGINES = ["sqlite", "postgresql"]
START_SECONDS = 60


@pytest.fixture(params=ENGINES)
def live(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Live]:
    if request.param == "postgresql" and not os.environ.get("HORDE_TEST_POSTGRES_DSN"):
        pytest.skip("PostgreSQL engine: set HORDE_TEST_POSTGRES_DSN to run (CI always does)")
    process = subprocess.Popen(
        [PROJECT_PYTHON, "-m", "conformance.live", "--engine", request.param, "--data-dir", str(tmp_path / "data")],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # the coordinator is listening once this line is printed
        if not line:
            raise RuntimeError(f"the coordinator did not start (exit status {process.wait(START_SECONDS)})")
        info = json.loads(line)
        running = Live(**info)
        with point_sdk_at(running.api_url):
            yield running
    finally:
        if process.stdin is not None:
            process.stdin.close()  # conformance/live.py stops, and drops its database
        try:
            process.wait(START_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def pytest_report_header() -> list[str]:
    from importlib.metadata import version

    return [f"horde-sdk {version('horde_sdk')} (strict) on Python {sys.version.split()[0]}"]
