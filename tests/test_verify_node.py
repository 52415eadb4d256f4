"""The real node daemon under verified work (issue 17): it declares its hardware class in its pops, its reward
is held, its console says so, and a node of another owner that the coordinator picks to check it is paid
like any job. Real daemons, the tiny pipeline, real HTTP."""

from pathlib import Path

import pytest

from coordinator.config import VerificationSettings
from node.daemon import EXIT_OK, NodeDaemon
from tests.api_support import custom_coordinator, fetch_all, generate, small
from tests.helpers import Api
from tests.node_support import RecordingConsole, node_config, running, until

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CHECK_ALL = VerificationSettings(enabled=True, new_rate=1.0, settled_rate=1.0, suspect_rate=1.0)


async def test_a_real_node_declares_its_class_and_sees_its_reward_held(
    tmp_path: Path, database_url: str | None, tiny_model_dir: Path
) -> None:
    async with custom_coordinator(tmp_path, database_url, verification=CHECK_ALL) as coordinator:
        payer = Api(coordinator.url, apikey=(await coordinator.create_account("payer", kudos=100)).apikey)
        first, second = [await coordinator.create_account(f"owner-{n}") for n in (1, 2)]
        consoles = [RecordingConsole(), RecordingConsole()]
        daemons = [
            NodeDaemon(
                node_config(
                    tmp_path / "a", coordinator.url, first.apikey, tiny_model_dir, name="node-a", dtype="float32"
                ),
                console=consoles[0],
            ),
            NodeDaemon(
                node_config(
                    tmp_path / "b", coordinator.url, second.apikey, tiny_model_dir, name="node-b", dtype="bfloat16"
                ),
                console=consoles[1],
            ),
        ]
        await generate(payer, small(steps=4))
        async with running(daemons[0]) as (stop_a, task_a), running(daemons[1]) as (stop_b, task_b):
            # One node makes the image, the other its check: both submit once.
            await until(lambda: sum(d.stats.jobs_submitted for d in daemons) == 2, timeout=60, what="two submits")
            stop_a.set()
            stop_b.set()
            assert await task_a == EXIT_OK and await task_b == EXIT_OK
        classes = {row["name"]: row for row in await fetch_all(coordinator, "SELECT name, info FROM workers")}
        assert '"hardware": "cpu/float32/' in classes["node-a"]["info"]
        assert '"hardware": "cpu/bfloat16/' in classes["node-b"]["info"]
        verdicts = await fetch_all(coordinator, "SELECT outcome FROM verdicts")
        assert [row["outcome"] for row in verdicts] == ["pass", "pass"]  # float32 and bfloat16 agree
        for console in consoles:
            [submitted] = [fields for kind, fields in console.events if kind == "submitted"]
            assert submitted["held"] == submitted["kudos"] > 0
            assert any("held until checks clear" in line for line in console.lines())
