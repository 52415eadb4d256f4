"""The two make targets a newcomer runs first: what they run, read from `make -n` (nothing is built)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.first_hour_support import ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def dry_run(target: str) -> str:
    done = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_make_test_lists_the_reasons_for_skipped_tests() -> None:
    pytest_line = next(line for line in dry_run("test").splitlines() if "-m pytest" in line)
    assert " -rs" in pytest_line, pytest_line


def test_make_demo_builds_its_model_inside_the_project() -> None:
    """The same .cache/tiny-sd as `make test`, not a folder under the user's home."""
    demo_line = next(line for line in dry_run("demo").splitlines() if "horde demo" in line)
    assert f"HORDE_CACHE_DIR={ROOT}/.cache " in demo_line, demo_line
