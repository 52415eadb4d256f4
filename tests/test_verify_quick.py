"""A result back quicker than its node's own measured speed allows is spot-checked for sure (issue 17): the
cheats that save work (noise, fewer steps, a copy) arrive early, so even a node with a long record, checked
at the settled rate, is checked on them. The node's measured speed is written into its record here, so the
test decides which results are quick, not the machine's load. Real coordinator, HTTP and tiny pipeline."""

from pathlib import Path

import pytest

from coordinator.config import VerificationSettings
from tests.api_support import MODEL, count, fetch_all, generate, small
from tests.verify_support import WINDOW, Network, audit_ok, network

pytestmark = pytest.mark.usefixtures("one_torch_thread")
# No image is checked by chance: only the quick ones are (at `suspect_rate`).
NEVER_BY_CHANCE = VerificationSettings(enabled=True, window=WINDOW, new_rate=0.0, settled_rate=0.0, suspect_rate=1.0)
BODY = small(steps=8)
WORK = 64 * 64 * 8 / 1e6  # one BODY image's megapixelsteps


async def measured(net: Network, name: str, seconds_per_image: float) -> None:
    """Node `name`'s measured speed on the tiny model: one BODY image per `seconds_per_image`."""
    async with net.coordinator.broker.services.database.transaction() as tx:
        worker = await tx.worker_by("name", name)
        assert worker is not None
        worker.speeds[MODEL] = [WORK, seconds_per_image, 5]
        await tx.save_worker_state(worker)


async def quick_checks(net: Network) -> int:
    rows = await fetch_all(net.coordinator, "SELECT info FROM checks")
    return sum('"quick": true' in row["info"] for row in rows)


async def test_an_image_back_quicker_than_its_nodes_speed_is_checked_and_an_unhurried_one_is_not(
    tmp_path: Path, database_url: str | None, tiny_model_dir: Path
) -> None:
    async with network(tmp_path, database_url, tiny_model_dir, "quarter", NEVER_BY_CHANCE) as net:
        await generate(net.payer, BODY)
        await net.serve("cheater")  # its first image: no speed measured yet, so never quick
        await measured(net, "cheater", seconds_per_image=3600.0)  # by its record, an image takes an hour
        await generate(net.payer, BODY)
        await net.serve("cheater")  # ¼ of the steps, back in far less than an hour: checked...
        assert await quick_checks(net) == 1
        await net.serve("f32", "bf16")  # ...by another owner's node, which disagrees; a third decides
        assert await net.verdicts() == {"cheater": ["fail"], "f32": ["pass"], "bf16": ["pass"]}
        await audit_ok(net.coordinator)


async def test_an_honest_node_at_its_measured_speed_is_not_checked(
    tmp_path: Path, database_url: str | None, tiny_model_dir: Path
) -> None:
    async with network(tmp_path, database_url, tiny_model_dir, None, NEVER_BY_CHANCE) as net:
        await generate(net.payer, BODY)
        await net.serve("f32")
        await measured(net, "f32", seconds_per_image=0.001)  # by its record, faster than any image it makes
        for _ in range(2):
            await generate(net.payer, BODY)
            await net.serve("f32")
        assert await count(net.coordinator, "checks") == 0
        await measured(net, "f32", seconds_per_image=3600.0)  # the same node, its record now an hour an image
        await generate(net.payer, BODY)
        await net.serve("f32")  # honest, but quicker than its record: checked (and it passes)
        assert await quick_checks(net) == 1
        await net.serve("bf16")
        assert await net.verdicts() == {"f32": ["pass"], "bf16": ["pass"]}
