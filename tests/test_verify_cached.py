"""The free check on every image (issue 17): a node that answers a job with the image it delivered for another
job (another seed) fails at once, with no check job and no inference, and forfeits what it holds; an honest
node that makes the same image twice for the same prompt and seed is not penalised. Real coordinator over
real HTTP, real tiny-pipeline nodes, spot checks off so only the free check can judge."""

from pathlib import Path

import pytest

from coordinator.config import VerificationSettings
from tests.api_support import fetch_all, generate, ledger_rows, small
from tests.helpers import Api
from tests.verify_support import WINDOW, audit_ok, network

pytestmark = pytest.mark.usefixtures("one_torch_thread")
NO_RERUNS = VerificationSettings(enabled=True, window=WINDOW, new_rate=0.0, settled_rate=0.0, suspect_rate=0.0)


async def test_a_cached_image_fails_at_once_and_an_honest_repeat_does_not(
    tmp_path: Path, database_url: str | None, tiny_model_dir: Path
) -> None:
    async with network(tmp_path, database_url, tiny_model_dir, "cached", NO_RERUNS) as net:
        for seed in ("51", "51"):  # the same job twice: the same pixels, honestly
            await generate(net.payer, small(steps=8, seed=seed))
            await net.serve("f32")
        await generate(net.payer, small(steps=8, seed="52"))
        await net.serve("cheater")  # its first image: an unseen picture (it cannot be told from work yet)
        assert await net.verdicts() == {}
        assert (await net.held("cheater"))[1] > 0

        await generate(net.payer, small(steps=8, seed="53"))
        await net.serve("cheater")  # the same picture for another seed: a copy
        assert await net.verdicts() == {"cheater": ["fail"]}
        assert await net.held("cheater") == (0.0, 0.0)  # both rewards forfeited
        assert not await fetch_all(net.coordinator, "SELECT job_id FROM checks")  # no inference was spent

        (verdict,) = await fetch_all(net.coordinator, "SELECT job_id FROM verdicts")
        checks = (await Api(net.coordinator.url).get(f"/v2/verdicts/{verdict['job_id']}")).body
        (document,) = [v["document"] for v in checks["verdicts"]]
        assert document["rule"] == "cached" and document["outcome"] == "fail"
        assert [c["worker_name"] for c in document["compared_with"]] == ["cheater"]  # its own earlier image
        kinds = [row["kind"] for row in await ledger_rows(net.coordinator)]
        assert kinds.count("verdict") == 1 and kinds.count("forfeit") == 2
        await audit_ok(net.coordinator)


async def test_another_owners_equal_image_is_checked_not_condemned(
    tmp_path: Path, database_url: str | None, tiny_model_dir: Path
) -> None:
    """A cheater answers seed 61 with seed 62's image; an honest node of another owner then makes seed 62's
    image, the same pixels. Either could be the false one, so the honest image is re-run, not failed."""
    async with network(tmp_path, database_url, tiny_model_dir, "seed", NO_RERUNS) as net:
        await generate(net.payer, small(steps=8, seed="61"))
        await net.serve("cheater")
        await generate(net.payer, small(steps=8, seed="62"))
        await net.serve("f32")
        assert await net.verdicts() == {}
        (check,) = await fetch_all(net.coordinator, "SELECT subject_job, state FROM checks")
        _cheated, honest = await fetch_all(net.coordinator, "SELECT job_id FROM image_prints ORDER BY created")
        assert check == {"subject_job": honest["job_id"], "state": "pending"}  # checked for certain, at rate 0
        await net.serve("bf16")  # the re-run agrees across classes: the honest node passes
        assert await net.verdicts() == {"f32": ["pass"], "bf16": ["pass"]}
        await audit_ok(net.coordinator)
