"""horde-sdk's own tests, from its source distribution (`make conformance` downloads it), run unchanged
against our coordinator: the SDK reads `AI_HORDE_URL` and `AI_HORDE_DEV_APIKEY` as it does against AI Horde,
and, for its network tests, an SDK worker of ours serves the images they ask for (on AI Horde, volunteers
do). Every test must pass except those in NOT_PASSED, each with its reason (docs/api.md lists them too);
a test of that list that starts passing fails here as well, so the list stays true."""

import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from horde_sdk.ai_horde_api.ai_horde_clients import AIHordeAPIManualClient

from conformance.sdk import Live, SdkWorker, serving

ROOT = Path(__file__).resolve().parent.parent
SDIST = Path(os.environ.get("HORDE_SDK_SDIST", ROOT / ".cache" / "horde_sdk-0.33.3"))
NETWORK_TESTS = [
    "tests/ai_horde_api/test_ai_horde_api_calls.py",
    "tests/ai_horde_api/test_ai_horde_generate_api_calls.py",
    "tests/ai_horde_api/test_ai_horde_status_api_calls.py",
    "tests/ai_horde_api/test_ai_horde_stats_api_calls.py",
    "tests/ai_horde_api/test_ai_horde_alchemy_api_calls.py",
    "tests/ai_horde_api/test_ai_horde_generate_text_api_calls.py",
    "tests/ai_horde_api/test_swagger.py",
]
NOT_SERVED = "not served: this network makes images only (no text generation, interrogation or alchemy)"
# Whole files of a family not served: any outcome.
NOT_SERVED_FILES = ("test_ai_horde_alchemy_api_calls.py", "test_ai_horde_generate_text_api_calls.py")
NOT_PASSED = {
    "test_ai_horde_generate_api_calls.py::TestAIHordeGenerate::test_simple_client_alchemy_basic": NOT_SERVED,
    "test_ai_horde_generate_api_calls.py::TestAIHordeGenerate::test_check_alchemy_callback": NOT_SERVED,
    "test_ai_horde_status_api_calls.py::TestAIHordeStatus::test_horde_status_models_all": NOT_SERVED,
    "test_ai_horde_status_api_calls.py::TestAIHordeStatus::test_horde_status_models_single_text": NOT_SERVED,
    "test_ai_horde_stats_api_calls.py::TestAIHordeStats::test_get_text_stats_models": NOT_SERVED,
    "test_ai_horde_stats_api_calls.py::TestAIHordeStats::test_get_text_stats_models_total": NOT_SERVED,
}
# The SDK's tests assume a real worker's pace: 3 images of 1 step are not all done within 7 s
# (`test_simple_client_async_image_generate_multiple_with_timeout`). A GPU's fixed cost per image (VAE
# decode, safety check, upload) and a few steps take seconds: a mid-range GPU makes a 512×512 SD 1.5 image in
# about this long, and so does the suite's worker.
SECONDS_PER_IMAGE = 3.5


def run_sdk_tests(live: Live, paths: list[str], junit: Path) -> subprocess.CompletedProcess[str]:
    if not (SDIST / "tests").is_dir():
        pytest.fail(f"horde-sdk's source distribution is not at {SDIST}: run `make conformance`")
    env = {
        **os.environ,
        "AI_HORDE_URL": live.api_url,
        "AI_HORDE_DEV_APIKEY": live.requester_key,
        "TESTS_ONGOING": "1",
        "HORDE_SDK_TESTING": "1",
    }
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--run-network-tests",
        f"--junitxml={junit}",
        *paths,
    ]
    return subprocess.run(command, cwd=SDIST, env=env, capture_output=True, text=True, timeout=900)


def outcomes(junit: Path) -> dict[str, str]:
    """Each test's id (file::class::name) and outcome: passed, failed or skipped."""
    found = {}
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        file = case.get("classname", "").split(".")
        name = (
            f"{file[-2]}.py::{file[-1]}::{case.get('name')}"
            if file[-1][:1].isupper()
            else f"{file[-1]}.py::{case.get('name')}"
        )
        kinds = {child.tag for child in case}
        found[name] = "failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds else "passed"
    return found


def test_sdk_network_tests_pass_but_the_not_served(live: Live, tmp_path: Path) -> None:
    worker = SdkWorker(
        AIHordeAPIManualClient(),
        live.worker_key,
        "sdk-tests-node",
        models=["Deliberate", "Stable Cascade 1.0"],  # the models the SDK's tests ask for
        seconds_per_image=SECONDS_PER_IMAGE,
    )
    with serving(worker):
        result = run_sdk_tests(live, NETWORK_TESTS, tmp_path / "junit.xml")
    found = outcomes(tmp_path / "junit.xml")
    failed = {name for name, outcome in found.items() if outcome == "failed" and not name.startswith(NOT_SERVED_FILES)}
    assert failed == set(NOT_PASSED), (sorted(failed ^ set(NOT_PASSED)), result.stdout[-3000:])
    assert sum(outcome == "passed" for outcome in found.values()) >= 30, result.stdout[-2000:]


ROUNDTRIP = "tests/ai_horde_api/test_ai_worker_roundtrip_api_calls.py"


def test_sdk_worker_roundtrip_passes(live: Live, tmp_path: Path) -> None:
    """The SDK's `test_basic_image_roundtrip`, the test AI Horde's own CI runs against its server: one apikey
    requests and serves, the worker PUTs raw RGB pixels (`Image.tobytes()`) and asserts its reward is over
    0. Here the image is funded, so its price moves from the account to itself (coordinator/economy.py:
    nothing minted), and the raw pixels are stored as a WebP (coordinator/sources.py)."""
    result = run_sdk_tests(live, [ROUNDTRIP], tmp_path / "junit.xml")
    found = outcomes(tmp_path / "junit.xml")
    assert found == {
        "test_ai_worker_roundtrip_api_calls.py::TestImageWorkerRoundtrip::test_basic_image_roundtrip": "passed"
    }, result.stdout[-3000:]
