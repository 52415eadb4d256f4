from protocol.keys import Identity
from tests.conftest import RunningCoordinator
from tests.helpers import Api, SimWorker


async def test_generate_pop_submit_status(coordinator: RunningCoordinator) -> None:
    requester = await coordinator.create_account("alice", kudos=100)
    owner = await coordinator.create_account("bob")
    api = Api(coordinator.url, apikey=requester.apikey)
    accepted = await api.post(
        "/v2/generate/async",
        {"prompt": "a cat", "models": ["tiny-sd"], "params": {"width": 64, "height": 64, "steps": 4, "n": 2}},
    )
    assert accepted.status == 202, accepted.body
    worker = SimWorker(Api(coordinator.url, apikey=owner.apikey, identity=Identity.generate()), "node-1")
    assert (await worker.serve_one()).status == 200
    assert (await worker.serve_one()).status == 200
    status = await api.get(f"/v2/generate/status/{accepted.body['id']}")
    assert status.body["done"] is True, status.body
    assert len(status.body["generations"]) == 2
