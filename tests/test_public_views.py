"""What the API shows of nodes, accounts and models, and owners' changes to their nodes: the figures and
filters of coordinator/workers.py, users.py and network.py that the broader API tests leave unchecked."""

import time

from coordinator.roster import MAINTENANCE_CLEAN_SECONDS
from tests.api_support import node, pop_job, requester, seed_of, small
from tests.conftest import RunningCoordinator
from tests.helpers import Api, tiny_webp


async def test_the_owners_maintenance_replaces_an_automatic_one_and_never_lifts(
    coordinator: RunningCoordinator,
) -> None:
    owner = await coordinator.create_account("owner")
    for name in ("left-alone", "taken-over"):
        assert (await node(coordinator, owner, name).pop()).status == 200
    services = coordinator.broker.services
    now = services.clock()
    async with services.database.transaction() as tx:  # both missed 3 deadlines: automatic maintenance
        for name in ("left-alone", "taken-over"):
            worker = await tx.worker_by("name", name)
            assert worker is not None
            worker.maintenance, worker.maintenance_until = True, now + MAINTENANCE_CLEAN_SECONDS
            worker.missed_deadlines = 3
            worker.maintenance_msg = "missed 3 job deadlines in a row"
            await tx.save_worker(worker)
    taken = next(w for w in (await Api(coordinator.url).get("/v2/workers")).body if w["name"] == "taken-over")
    change = await Api(coordinator.url, apikey=owner.apikey).call(
        "PUT", f"/v2/workers/{taken['id']}", {"maintenance": True}
    )
    assert change.status == 200

    services.clock = lambda: time.time() + MAINTENANCE_CLEAN_SECONDS + 60  # the clean period is over
    await coordinator.broker.upkeep.end_maintenance()
    workers = {w["name"]: w for w in (await Api(coordinator.url).get("/v2/workers")).body}
    assert workers["left-alone"]["maintenance_mode"] is False  # the automatic one lifted by itself
    assert workers["taken-over"]["maintenance_mode"] is True  # the owner's word stands
    assert workers["taken-over"]["uncompleted_jobs"] == 3  # still counted: only lifting it forgets them


async def test_an_account_shows_its_online_workers_contributions(coordinator: RunningCoordinator) -> None:
    alice = await coordinator.create_account("alice", kudos=100)
    owner = await coordinator.create_account("owner")
    worker = node(coordinator, owner, "n1")
    assert (await worker.pop()).status == 200
    body = small(n=2, width=512, height=512, steps=10)
    assert (await requester(coordinator, alice).post("/v2/generate/async", body)).status == 202
    for _ in range(2):  # one image per pop
        popped = await pop_job(worker)
        assert (await worker.submit(popped.body["ids"][0], seed_of(popped), tiny_webp(size=512))).status == 200
    services = coordinator.broker.services
    services.clock = lambda: time.time() + 5  # past the roster's short-lived view of who is online
    details = (await Api(coordinator.url).get(f"/v2/users/{owner.id}")).body
    listed = (await Api(coordinator.url).get("/v2/workers?name=n1")).body
    assert details["worker_count"] == 1 and details["worker_ids"] == [listed[0]["id"]]
    assert details["contributions"] == {"megapixelsteps": round(2 * 512 * 512 * 10 / 1e6, 2), "fulfillments": 2}
    assert (await Api(coordinator.url).get(f"/v2/users/{alice.id}")).body["contributions"] == {
        "megapixelsteps": 0,
        "fulfillments": 0,
    }


async def test_models_are_filtered_by_the_number_of_nodes_serving_them(coordinator: RunningCoordinator) -> None:
    owner = await coordinator.create_account("owner")
    for name in ("n1", "n2"):
        assert (await node(coordinator, owner, name).pop()).status == 200
    api = Api(coordinator.url)

    async def names(query: str) -> list[tuple[str, int]]:
        reply = await api.get(f"/v2/status/models{query}")
        assert reply.status == 200, reply.body
        return [(model["name"], model["count"]) for model in reply.body]

    assert await names("") == [("tiny-sd", 2)]
    assert await names("?min_count=2&max_count=2") == [("tiny-sd", 2)]
    assert await names("?min_count=3") == []
    assert await names("?max_count=1") == []
    assert await names("?type=text") == []
    assert await names("?type=all") == [("tiny-sd", 2)]
