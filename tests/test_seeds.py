"""One reading of a seed (protocol/seeds.py): what the coordinator numbers a request's images from is
what a node runs, whether the node reads the coordinator's per-image seed or numbers an unsigned
AI Horde batch itself."""

import pytest

from coordinator.queueing import image_seeds
from node.jobs import _nth_payload
from node.jobspec import JobSpec
from protocol.seeds import SEED_SPACE, seed_number
from tests.api_support import generate, node, pop_job, requester, seed_of, small
from tests.conftest import RunningCoordinator

READINGS = [
    ("-17", SEED_SPACE - 17),  # a signed integer is a number, not text to hash
    ("+5", 5),
    (" 007 ", 7),
    (str(SEED_SPACE + 5), 5),
    ("²", None),  # not an ASCII digit: hashed, as any text is
    ("cat", None),
]


@pytest.mark.parametrize(("text", "number"), READINGS)
def test_coordinator_and_node_read_a_seed_alike(text: str, number: int | None) -> None:
    coordinator_seeds = [int(seed) for seed in image_seeds(text, None, 3)]
    unsigned_batch = [int(str(_nth_payload({"seed": text}, index)["seed"])) for index in range(3)]
    parsed = JobSpec.from_payload("m", {"prompt": "p", "seed": text, "n_iter": 3}).seeds
    assert coordinator_seeds == unsigned_batch == parsed
    assert coordinator_seeds[0] == seed_number(text) == seed_number(text)  # stable, not random
    if number is not None:
        assert coordinator_seeds == [number, (number + 1) % SEED_SPACE, (number + 2) % SEED_SPACE]
    assert all(0 <= seed < SEED_SPACE for seed in coordinator_seeds)


async def test_a_negative_seed_reaches_the_node_as_its_number(coordinator: RunningCoordinator) -> None:
    alice = await coordinator.create_account("alice", kudos=100)
    owner = await coordinator.create_account("owner")
    await generate(requester(coordinator, alice), small(seed="-17", n=2, seed_variation=3))
    worker = node(coordinator, owner, "n1")
    popped = await pop_job(worker)
    payload_seed = seed_of(popped)
    assert payload_seed in (str(SEED_SPACE - 17), str(SEED_SPACE - 14))
    assert JobSpec.from_payload("m", {"prompt": "p", "seed": payload_seed}).seeds == [int(payload_seed)]
