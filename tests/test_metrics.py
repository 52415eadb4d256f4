"""`/metrics`: Prometheus text that the library's own parser reads, and every metric moves when its
event happens (a request queued, a pop, a dispatch, a result paid, a fault, a statement)."""

import asyncio
import json
import re
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from node.cli import build_parser, flag_layer
from node.config import build_config
from node.daemon import NodeDaemon
from node.metrics import STEP_SECONDS, NodeCollector, serve_metrics
from tests.api_support import generate, node, pop_job, requester, seed_of, small
from tests.conftest import RunningCoordinator, free_port
from tests.helpers import Api
from tests.node_support import RecordingConsole, finished, node_config, request_images, running, until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(coordinator: RunningCoordinator) -> Samples:
    async with aiohttp.ClientSession() as session, session.get(f"{coordinator.url}/metrics") as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        text = await response.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def families(coordinator: RunningCoordinator) -> set[str]:
    """Every metric family's series names, also of those with no series yet (a labelled counter before
    its first event)."""
    async with aiohttp.ClientSession() as session, session.get(f"{coordinator.url}/metrics") as response:
        text = await response.text()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    return {
        family.name + suffix
        for family in text_string_to_metric_families(text)
        for suffix in suffixes.get(family.type, ("",))
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every sample of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, key), v in samples.items() if n == name and wanted <= set(key))


async def test_every_metric_moves_with_its_event(coordinator: RunningCoordinator) -> None:
    owner = await coordinator.create_account("owner")
    alice = await coordinator.create_account("alice", kudos=500)
    worker = node(coordinator, owner, "metered")
    start = await scrape(coordinator)
    assert value(start, "horde_kudos_held") == 500
    assert value(start, "horde_kudos_minted_total") == 500  # the grant entered from no account

    # A request: jobs waiting, the queue per model.
    request_id = await generate(requester(coordinator, alice), small(n=2))
    queued = await scrape(coordinator)
    assert value(queued, "horde_jobs", state="waiting") == value(start, "horde_jobs", state="waiting") + 2
    assert value(queued, "horde_queue_jobs", model="tiny-sd") == 2
    assert value(queued, "horde_queue_megapixelsteps", model="tiny-sd") == 2 * 64 * 64 * 4 / 1e6
    endpoint = "/api/v2/generate/async"
    assert value(queued, "horde_http_requests_total", endpoint=endpoint, method="POST", status="202") == (
        value(start, "horde_http_requests_total", endpoint=endpoint, method="POST", status="202") + 1
    )
    assert total(queued, "horde_http_request_duration_seconds_count", endpoint=endpoint) >= 1
    assert total(queued, "horde_db_statement_duration_seconds_count") > total(
        start, "horde_db_statement_duration_seconds_count"
    )

    # A pop: the node is online, its pop timed, the job dispatched.
    popped = await pop_job(worker)
    dispatched = await scrape(coordinator)
    assert value(dispatched, "horde_nodes_online") == 1
    assert value(dispatched, "horde_jobs", state="processing") == 1
    assert value(dispatched, "horde_queue_jobs", model="tiny-sd") == 1
    assert value(dispatched, "horde_pop_duration_seconds_count") == value(start, "horde_pop_duration_seconds_count") + 1
    assert value(dispatched, "horde_dispatch_latency_seconds_count") == (
        value(start, "horde_dispatch_latency_seconds_count") + 1
    )

    # A result: spent and rewarded; then a fault on the second image.
    assert (await worker.submit(popped.body["ids"][0], seed_of(popped))).status == 200
    second = await pop_job(worker)
    assert (await worker.submit(second.body["ids"][0], seed_of(second), state="faulted")).status == 200
    end = await scrape(coordinator)
    assert value(end, "horde_jobs", state="done") == value(start, "horde_jobs", state="done") + 1
    price = (await requester(coordinator, alice).get(f"/v2/generate/check/{request_id}")).body["kudos"]
    assert price > 0
    assert value(end, "horde_kudos_spent_total") == value(start, "horde_kudos_spent_total") + price
    reward = value(end, "horde_kudos_held") - (500 - price)
    assert reward > 0  # the node's owner was paid: minted or moved, the kudos held says so
    assert value(end, "horde_job_faults_total", cause="reported") == (
        value(start, "horde_job_faults_total", cause="reported") + 1
    )


async def test_unknown_paths_share_one_label(coordinator: RunningCoordinator) -> None:
    """Clients choose paths, not label values: every unmatched path counts as one series."""
    async with aiohttp.ClientSession() as session:
        for path in ("/nope-1", "/nope-2", "/api/v2/nothing"):
            async with session.get(f"{coordinator.url}{path}") as response:
                assert response.status == 404
                assert (await response.json())["rc"] == "NotFound"
    samples = await scrape(coordinator)
    assert value(samples, "horde_http_requests_total", endpoint="unmatched", method="GET", status="404") >= 3
    assert not [key for key in samples if "nope" in str(key)]


async def scrape_url(url: str) -> Samples:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        text = await response.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.timeout(120)
async def test_node_metrics_move_with_its_jobs(
    coordinator: RunningCoordinator, tmp_path: Path, tiny_model_dir: Path
) -> None:
    """`--metrics-port`: the flag reaches the config, and a real node's figures move when it makes an image."""
    args = build_parser().parse_args(["run", "--metrics-port", "9123"])
    assert build_config(flag_layer(args), tmp_path / "flags").metrics_port == 9123
    owner = await coordinator.create_account("owner")
    alice = await coordinator.create_account("alice", kudos=100)
    port = free_port()
    daemon = NodeDaemon(
        node_config(tmp_path, coordinator.url, owner.apikey, tiny_model_dir, metrics_port=port),
        console=RecordingConsole(),
    )
    serve_metrics(daemon, port)
    url = f"http://127.0.0.1:{port}/metrics"
    before = await scrape_url(url)
    assert value(before, "horde_node_images_total") == 0
    assert value(before, "horde_node_ram_bytes") > 10_000_000
    async with running(daemon):
        api = Api(coordinator.url, apikey=alice.apikey)
        await finished(api, await request_images(api, n=1, steps=3), timeout=60)
        await until(lambda: daemon.stats.jobs_submitted == 1, 30, "the result delivered")
        after = await scrape_url(url)
    assert value(after, "horde_node_images_total") == 1
    assert value(after, "horde_node_jobs_total", outcome="done") == 1
    assert value(after, "horde_node_jobs_total", outcome="submitted") == 1
    assert value(after, "horde_node_kudos_earned_total") > 0
    assert value(after, "horde_node_kudos_per_hour") > 0
    assert value(after, "horde_node_spool_depth") == 0
    assert value(after, "horde_node_step_seconds_count") == value(before, "horde_node_step_seconds_count") + 1


async def test_the_grafana_dashboard_reads_metrics_that_exist(coordinator: RunningCoordinator, tmp_path: Path) -> None:
    dashboard = json.loads((Path(__file__).parent.parent / "deploy/grafana/horde-network.json").read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bhorde_[a-z_]+", target["expr"])
    }
    owner = await coordinator.create_account("owner")
    await node(coordinator, owner, "seen").pop()  # so the pop and HTTP series exist
    exposed = {name for name, _ in await scrape(coordinator)} | await families(coordinator)
    daemon = NodeDaemon(node_config(tmp_path, coordinator.url, owner.apikey, tmp_path), console=RecordingConsole())
    registry = CollectorRegistry()
    registry.register(NodeCollector(daemon))
    exposed |= {s.name for family in registry.collect() for s in family.samples}
    exposed |= {s.name for family in STEP_SECONDS.collect() for s in family.samples}
    exposed |= {"horde_node_vram_bytes"}  # no GPU here: no series
    assert queried and not queried - exposed, sorted(queried - exposed)


async def test_concurrent_scrapes_count_each_ledger_entry_once(coordinator: RunningCoordinator) -> None:
    for index in range(5):
        await coordinator.create_account(f"funded{index}", kudos=10)
    scrapes = await asyncio.gather(*(scrape(coordinator) for _ in range(6)))
    assert {value(samples, "horde_kudos_minted_total") for samples in scrapes} == {50}
    assert value(await scrape(coordinator), "horde_kudos_minted_total") == 50
