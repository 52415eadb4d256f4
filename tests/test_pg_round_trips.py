"""Round trips to PostgreSQL per endpoint, pinned (issue 19): a change that adds one fails here.

On PostgreSQL every wait for the server costs both processes CPU and a context switch each, and under
load it was most of the coordinator's busy time; the engine counts them (`PostgresDatabase.round_trips`,
by route, also the `horde_db_round_trips` metric). This test runs one job's whole cycle — a signed node's
empty pop, an apikey requester's generate and check, the node's pop and signed submit, the requester's
check and status — and compares each call's count with the figure pinned below. Not a timing test.

The coordinator's clock is frozen so its time-based caches (the roster, the wait forecast) refresh only
when something invalidates them, which the cycle does the same way each time; the counts are read on the
third cycle, when every statement is prepared and every first-time registration is behind.
"""

import time
from collections.abc import Awaitable
from typing import Any

import pytest

from tests.api_support import generate, node, requester, small
from tests.conftest import POSTGRES_DSN, RunningCoordinator

pytestmark = pytest.mark.skipif(not POSTGRES_DSN, reason="set HORDE_TEST_POSTGRES_DSN to run (CI always does)")

POP, GENERATE = "/api/v2/generate/pop", "/api/v2/generate/async"
CHECK, STATUS, SUBMIT = "/api/v2/generate/check/{id}", "/api/v2/generate/status/{id}", "/api/v2/generate/submit"
# The most round trips each call of the cycle may take. Before issue 19: pop (empty) 10, generate 15, check
# (waiting) 9, pop (job) 21, submit 33, check (done) 3, status 3. A signed call's apikey, key and nonce were three
# round trips until they became one statement (storage/callers.py): pop (empty) 5, pop (job) 11, submit 16; and
# webhooks.py read the request at each change to learn it has none: pop (job) 9, submit 14. A NOTIFY was a round
# trip of its own after the COMMIT until it went in the COMMIT's message (`Tx.announce`): generate 6, pop (job) 8,
# submit 13; and a result read its node, its payer, the request's unfinished images and the ledger's head one at
# a time until `Tx.settling` read them with the job: submit 12; and a pop read the jobs its node holds apart from
# the job it chose, and sent BEGIN before a claim that is the whole transaction: pop (job) 7.
PINNED = {
    "pop (empty)": 3,  # apikey, node key and nonce as one; the queue; the queue's head to explain `skipped`
    "generate": 5,  # apikey; BEGIN + ledger lock; cap and balance; request, jobs and queue rows as one; COMMIT + NOTIFY
    "check (waiting)": 4,  # request and jobs; the queue ahead; the forecast (the new request made it stale): 2
    # apikey, node key and nonce as one; the queue; job, request and the jobs the node holds as one; the claim
    # (queue rows and job as one statement, which commits by itself); NOTIFY (webhooks.py knows the request has
    # no webhook: it was accepted here)
    "pop (job)": 5,
    # apikey, node key and nonce as one; the job; BEGIN + lock; job, request, node, payer, unfinished images and
    # the ledger's head as one; job, node, stats and the charge as one; both entries, the reward and the request's
    # state as one; COMMIT + NOTIFY
    "submit": 7,
    "check (done)": 1,  # request and jobs
    "status": 1,
}


@pytest.fixture
def database_url(database_url: str | None) -> str | None:
    if database_url is None:
        pytest.skip("round trips are counted on PostgreSQL")
    return database_url


async def test_round_trips_per_endpoint_are_pinned(coordinator: RunningCoordinator) -> None:
    frozen = time.time()
    coordinator.broker.services.clock = lambda: frozen
    trips = coordinator.broker.services.database.round_trips  # type: ignore[attr-defined]
    alice = await coordinator.create_account("alice", kudos=1000)
    owner = await coordinator.create_account("owner")
    api, worker = requester(coordinator, alice), node(coordinator, owner, "counted-node")

    async def counted(route: str, call: Awaitable[Any]) -> tuple[Any, int]:
        before = trips[route]
        result = await call
        return result, trips[route] - before

    measured: dict[str, int] = {}
    for _cycle in range(3):
        empty, measured["pop (empty)"] = await counted(POP, worker.pop())
        assert empty.status == 200 and not empty.body["ids"], empty.body
        request_id, measured["generate"] = await counted(GENERATE, generate(api, small()))
        check, measured["check (waiting)"] = await counted(CHECK, api.get(f"/v2/generate/check/{request_id}"))
        assert check.body["waiting"] == 1, check.body
        popped, measured["pop (job)"] = await counted(POP, worker.pop())
        assert popped.body["ids"], popped.body
        seed = popped.body["jobs"][0]["document"]["payload"]["seed"]
        submitted, measured["submit"] = await counted(SUBMIT, worker.submit(popped.body["ids"][0], seed))
        assert submitted.status == 200 and submitted.body["reward"] > 0, submitted.body
        check, measured["check (done)"] = await counted(CHECK, api.get(f"/v2/generate/check/{request_id}"))
        assert check.body["done"], check.body
        status, measured["status"] = await counted(STATUS, api.get(f"/v2/generate/status/{request_id}"))
        assert len(status.body["generations"]) == 1, status.body

    over = {call: (count, PINNED[call]) for call, count in measured.items() if count > PINNED[call]}
    assert not over, f"more round trips than pinned (measured, pinned): {over}; all measured: {measured}"
