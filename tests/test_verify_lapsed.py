"""A spot check nobody runs (issue 17): when its request expires, the check is marked expired instead of
staying "pending" for ever, `horde verify --checks` says so, and the reward it kept held is still released
at the normal time. Real coordinator over real HTTP, a real tiny-pipeline node; time moves by the
coordinator's clock and the upkeep rounds are run by the test, never waited for."""

import time
from pathlib import Path

import pytest

from client.verify import describe_checks
from protocol.verdicts import ImageChecks
from tests.api_support import fetch_all, generate, small
from tests.helpers import Api
from tests.verify_support import WINDOW, audit_ok, network

pytestmark = pytest.mark.usefixtures("one_torch_thread")


async def test_an_expired_check_is_marked_and_its_hold_released_on_time(
    tmp_path: Path, database_url: str | None, tiny_model_dir: Path
) -> None:
    async with network(tmp_path, database_url, tiny_model_dir) as net:
        coordinator = net.coordinator
        await generate(net.payer, small(steps=8, seed="21"))
        await net.serve("cheater")  # honest here; every image is checked, but no node ever runs this check
        (check,) = await fetch_all(coordinator, "SELECT subject_job FROM checks")
        job_id = check["subject_job"]
        held = (await net.held("cheater"))[1]
        assert held > 0

        expiry = coordinator.broker.services.config.request_expiry_seconds
        coordinator.broker.services.clock = lambda: time.time() + expiry + 1
        await coordinator.broker.upkeep.run_once()  # the check's request expires, and so does the check
        checks = ImageChecks.model_validate((await Api(coordinator.url).get(f"/v2/verdicts/{job_id}")).body)
        assert not checks.pending and [c.state for c in checks.checks] == ["expired"], checks
        assert await net.held("cheater") == (0.0, held)  # its window is still open

        lines, problems = describe_checks(checks, None)
        assert problems == [] and lines == ["check: a spot check of this image expired before a node ran it"]

        coordinator.broker.services.clock = lambda: time.time() + WINDOW + expiry + 1
        await coordinator.broker.upkeep.run_once()
        assert await net.held("cheater") == (held, 0.0)  # released at the normal time, with no verdict
        assert await net.verdicts() == {}
        await audit_ok(coordinator)
