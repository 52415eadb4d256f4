"""Several coordinator processes on one PostgreSQL database, end to end over HTTP.

Three `horde-coordinator serve` subprocesses share the database, the coordinator key and
secret, and one images folder. Requesters and simulated nodes are spread over them. The
database is reached through a TCP proxy (tests/pg_outage.py) so a test can take it away
the way a server restart does, without disturbing other tests on the same server; set
HORDE_TEST_POSTGRES_RESTART=1 to restart the real server (pg_ctlcluster) instead.
"""

import asyncio
import contextlib
import hashlib
import itertools
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from coordinator.app import open_services
from coordinator.bank import Bank
from coordinator.config import CoordinatorConfig
from coordinator.services import Services
from protocol.keys import Identity
from protocol.ledger import hundredths
from protocol.provenance import JobDocument, verify_job
from tests.conftest import POSTGRES_DSN
from tests.helpers import Api, Reply, SimWorker
from tests.pg_outage import ClusterRestart, OutageProxy, restart_proof_database
from transport.keyfiles import load_or_create_secret, save_identity

pytestmark = [pytest.mark.skipif(not POSTGRES_DSN, reason="set HORDE_TEST_POSTGRES_DSN"), pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[1]
PROCESSES = 3
REAL_RESTART = os.environ.get("HORDE_TEST_POSTGRES_RESTART") == "1"


def small(n: int) -> dict[str, Any]:
    return {"prompt": "a lighthouse", "models": ["tiny-sd"], "params": {"width": 64, "height": 64, "steps": 4, "n": n}}


@dataclass
class Cluster:
    urls: list[str]
    database_url: str  # direct, for the test's own checks
    services: Services  # the test's own view of the shared database and keys
    outage: OutageProxy | ClusterRestart | None  # what takes the database away, if anything
    session: aiohttp.ClientSession

    @property
    def bank(self) -> Bank:
        return Bank(self.services)

    def api(self, index: int, apikey: str | None = None, identity: Identity | None = None) -> Api:
        return Api(self.urls[index % len(self.urls)], apikey=apikey, identity=identity, session=self.session)

    async def account(self, name: str, kudos: float = 0.0) -> str:
        account, apikey = await self.bank.open_account(name)
        if kudos:
            await self.bank.grant(account.id, kudos)
        return apikey

    async def rows(self, sql: str) -> list[dict[str, Any]]:
        async with self.services.database.reader() as tx:
            return await tx.driver.fetchall(sql)


def shared_secrets(folder: Path) -> list[Path]:
    """The coordinator key and secret every process must share: jobs are signed with the
    one key, and an apikey hashed on one process must match on the others."""
    folder.mkdir(parents=True)
    save_identity(Identity.generate(), folder / "coordinator.key")
    load_or_create_secret(folder / "secret.key")
    return [folder / "coordinator.key", folder / "secret.key"]


def spawn(index: int, root: Path, database: str, images: Path, secrets: list[Path]) -> tuple[subprocess.Popen, Path]:
    data_dir = root / f"coordinator-{index}"
    data_dir.mkdir()
    for path in secrets:
        shutil.copy2(path, data_dir / path.name)
    port_file, log = data_dir / "port", data_dir / "log.txt"
    command = [
        sys.executable,
        "-m",
        "coordinator.cli",
        "--data-dir",
        str(data_dir),
        "--db",
        database,
        "--log-level",
        "info",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--port-file",
        str(port_file),
        "--no-rate-limits",
        "--concurrency",
        "100000",
        "--images",
        str(images),
    ]
    with open(log, "wb") as handle:
        process = subprocess.Popen(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
    return process, port_file


def bound_port(port_file: Path) -> str | None:
    text = port_file.read_text().strip() if port_file.exists() else ""
    return text or None


def log_tail(port_file: Path, size: int = 4000) -> str:
    return f"--- {port_file.parent.name} ---\n{(port_file.parent / 'log.txt').read_text()[-size:]}"


async def wait_for_port(process: subprocess.Popen, port_file: Path) -> str:
    deadline = time.monotonic() + 60
    while (port := bound_port(port_file)) is None:
        assert process.poll() is None, f"coordinator exited: {log_tail(port_file)}"
        assert time.monotonic() < deadline, "coordinator did not start in 60 s"
        await asyncio.sleep(0.05)
    return f"http://127.0.0.1:{port}"


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.asynccontextmanager
async def running_cluster(root: Path, outage: bool) -> AsyncIterator[Cluster]:
    """The processes on a fresh database; with `outage`, reached through something that can
    take the database away (the proxy, or the real server with HORDE_TEST_POSTGRES_RESTART=1)."""
    assert POSTGRES_DSN
    async with restart_proof_database(POSTGRES_DSN) as url:
        switch: OutageProxy | ClusterRestart | None = None
        if outage:
            switch = ClusterRestart() if REAL_RESTART else await OutageProxy(url).start()
        served = switch.url if isinstance(switch, OutageProxy) else url
        secrets = shared_secrets(root / "shared")
        services = await open_services(CoordinatorConfig(data_dir=secrets[0].parent, database=url))
        spawned = [spawn(i, root, served, root / "images", secrets) for i in range(PROCESSES)]
        try:
            urls = [await wait_for_port(process, port_file) for process, port_file in spawned]
            async with aiohttp.ClientSession() as session:
                yield Cluster(urls, url, services, switch, session)
        finally:
            stop([process for process, _ in spawned])
            for _, port_file in spawned:  # pytest shows this only when a test fails
                print(log_tail(port_file))
            await services.database.close()
            if isinstance(switch, OutageProxy):
                await switch.stop()


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with running_cluster(tmp_path, outage=False) as running:
        yield running


@pytest.fixture
async def cluster_with_outage(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with running_cluster(tmp_path, outage=True) as running:
        yield running


# --- simulated nodes ------------------------------------------------------------------------


def unavailable(reply: Reply) -> bool:
    """A 503 is fine during an outage, but only the documented one; anything else fails."""
    if reply.status >= 500:
        assert (reply.status, reply.rc) == (503, "StorageUnavailable"), reply.body
        assert reply.body["message"], reply.body
        return True
    return False


@dataclass
class Node:
    worker: SimWorker
    amount: int  # images asked for per pop
    popped: list[str] = field(default_factory=list)
    documents: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    replies: Counter[int] = field(default_factory=Counter)
    parked: bool = False


@dataclass
class Flow:
    """Start/stop switches shared by the nodes, and a count of delivered images."""

    running: asyncio.Event = field(default_factory=asyncio.Event)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    delivered: int = 0
    target: int = 0
    reached: asyncio.Event = field(default_factory=asyncio.Event)
    unavailable: asyncio.Event = field(default_factory=asyncio.Event)  # a node was answered 503

    def aim(self, target: int) -> None:
        self.target = target
        self.reached.clear()

    def count(self) -> None:
        self.delivered += 1
        if self.delivered >= self.target:
            self.reached.set()


async def run_node(node: Node, flow: Flow) -> None:
    while not flow.stop.is_set():
        if not flow.running.is_set():
            node.parked = True
            await flow.running.wait()
            node.parked = False
            continue
        reply = await node.worker.pop(wait=2, amount=node.amount)
        node.replies[reply.status] += 1
        if unavailable(reply):
            flow.unavailable.set()
            await asyncio.sleep(0.2)
            continue
        assert reply.status == 200, reply.body
        for index, job_id in enumerate(reply.body["ids"]):
            node.popped.append(job_id)
            job = reply.body["jobs"][index]
            node.documents.append((job["document"], job["signature"]))
            await submit_until_taken(node, job_id, job["document"]["payload"]["seed"])
            flow.count()


async def submit_until_taken(node: Node, job_id: str, seed: str) -> None:
    for attempt in itertools.count():
        reply = await node.worker.submit(job_id, seed)
        node.replies[reply.status] += 1
        if unavailable(reply):
            await asyncio.sleep(0.2)
            continue
        # After a 503 the commit may have happened with its answer lost: then it is a duplicate.
        assert reply.status == 200 or (attempt and reply.rc == "DuplicateGen"), reply.body
        return


async def make_nodes(cluster: Cluster, per_process: int) -> list[Node]:
    nodes = []
    for index in range(PROCESSES * per_process):
        apikey = await cluster.account(f"owner-{index}")
        worker = SimWorker(cluster.api(index, apikey, Identity.generate()), f"node-{index}")
        nodes.append(Node(worker, amount=1 + index % 3))
    return nodes


async def until(flow_event: asyncio.Event, tasks: list[asyncio.Task[None]], timeout: float) -> None:
    """Wait for the event, failing at once if a node hit an assertion."""
    waiter = asyncio.ensure_future(flow_event.wait())
    done, _ = await asyncio.wait([waiter, *tasks], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    for task in done:
        task.result()
    waiter.cancel()
    assert flow_event.is_set(), "timed out"


async def finish(flow: Flow, tasks: list[asyncio.Task[None]]) -> None:
    flow.stop.set()
    flow.running.set()
    await asyncio.gather(*tasks)


async def post_requests(cluster: Cluster, apikeys: list[str], count: int, n: int) -> list[str]:
    """`count` requests of `n` images, spread over requesters and processes."""
    gate = asyncio.Semaphore(8)

    async def post(index: int) -> str:
        async with gate:
            reply = await cluster.api(index, apikeys[index % len(apikeys)]).post("/v2/generate/async", small(n))
        assert reply.status == 202, reply.body
        return reply.body["id"]

    return list(await asyncio.gather(*(post(index) for index in range(count))))


# --- checks -----------------------------------------------------------------------------------


async def check_delivered(cluster: Cluster, request_ids: list[str], n: int) -> None:
    """Every request is done with all its images, each fetched from a process other than
    the one that took the request, and matching the hash its node signed."""
    gate = asyncio.Semaphore(16)

    async def check(index: int, request_id: str) -> None:
        async with gate:
            status = await cluster.api(index + 1).get(f"/v2/generate/status/{request_id}")
            assert status.status == 200 and status.body["done"], status.body
            assert len(status.body["generations"]) == n, status.body
            for generation in status.body["generations"]:
                async with cluster.session.get(generation["img"]) as response:
                    assert response.status == 200
                    image = await response.read()
                assert hashlib.sha256(image).hexdigest() == generation["image_sha256"]
                assert generation["signature"] and generation["job_signature"]

    await asyncio.gather(*(check(index, request_id) for index, request_id in enumerate(request_ids)))


async def check_database(cluster: Cluster, nodes: list[Node]) -> None:
    popped = [job_id for node in nodes for job_id in node.popped]
    assert len(popped) == len(set(popped)), "a job was handed out twice"
    jobs = await cluster.rows("SELECT id, state, request_id FROM jobs")
    assert {row["id"] for row in jobs} == set(popped), "a job was never handed out"
    assert {row["state"] for row in jobs} == {"done"}
    assert await cluster.rows("SELECT job_id FROM queue") == []
    assert {row["state"] for row in await cluster.rows("SELECT state FROM requests")} == {"done"}
    public_key = cluster.services.identity.public_key
    for node in nodes:  # whichever process signed a job, it signed with the one coordinator key
        for document, signature in node.documents:
            assert verify_job(public_key, JobDocument.model_validate(document), signature)


async def check_ledger(cluster: Cluster, minted_for_requesters: float) -> None:
    report = await cluster.bank.audit()
    assert report.ok, report.problems
    # Rewards are minted for node owners and the same amounts burned from requesters.
    async with cluster.services.database.reader() as tx:
        balances = await tx.cached_hundredths()
    assert sum(balances.values()) == hundredths(minted_for_requesters)
    audit = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "coordinator.cli",
        "--data-dir",
        str(cluster.services.config.data_dir),
        "--db",
        cluster.database_url,
        "audit",
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    output = (await asyncio.wait_for(audit.communicate(), 60))[0].decode()
    assert audit.returncode == 0 and "ledger OK" in output, output


# --- the tests ---------------------------------------------------------------------------------


async def test_a_job_queued_on_one_process_wakes_a_node_waiting_on_another(cluster: Cluster) -> None:
    requester = cluster.api(0, await cluster.account("alice", kudos=1000))
    latencies, after_answer = [], []
    for round_ in range(5):
        owner = await cluster.account(f"owner-{round_}")  # a new node each round: past one account's three
        waiting_on = 1 + round_ % (PROCESSES - 1)  # never the process that takes the request
        worker = SimWorker(cluster.api(waiting_on, owner, Identity.generate()), f"waiter-{round_}")
        assert (await worker.pop()).status == 200  # registers the node
        pop = asyncio.create_task(worker.pop(wait=20))
        await asyncio.sleep(0.3)  # let the pop settle into its long-poll
        started = time.perf_counter()
        accepted = await requester.post("/v2/generate/async", small(1))
        answered = time.perf_counter()
        popped = await pop
        latencies.append(time.perf_counter() - started)
        after_answer.append(time.perf_counter() - answered)
        assert accepted.status == 202 and popped.body["ids"], (accepted.body, popped.body)
        assert (await worker.submit(popped.body["ids"][0], popped.body["payload"]["seed"])).status == 200
    print(
        f"\ncross-process wake-up: POST sent on one process → job popped on another: "
        f"{', '.join(f'{s * 1000:.0f}' for s in latencies)} ms; "
        f"of which after the POST was answered: {', '.join(f'{s * 1000:.0f}' for s in after_answer)} ms"
    )
    assert max(latencies) < 5.0


async def test_three_processes_deliver_1000_jobs_each_handed_out_once(cluster: Cluster) -> None:
    requesters = [await cluster.account(f"requester-{i}", kudos=10_000) for i in range(5)]
    nodes = await make_nodes(cluster, per_process=2)
    flow = Flow(target=1000)
    flow.running.set()
    tasks = [asyncio.create_task(run_node(node, flow)) for node in nodes]
    started = time.perf_counter()
    request_ids = await post_requests(cluster, requesters, count=100, n=10)
    await until(flow.reached, tasks, timeout=120)
    elapsed = time.perf_counter() - started
    await finish(flow, tasks)
    print(
        f"\n1000 jobs through {PROCESSES} processes and {len(nodes)} nodes in {elapsed:.1f} s "
        f"({1000 / elapsed:.0f} jobs/s); per node: {[len(node.popped) for node in nodes]}"
    )
    assert all(node.popped for node in nodes), "every node got work"
    assert sum(node.replies[503] for node in nodes) == 0
    await check_database(cluster, nodes)
    await check_delivered(cluster, request_ids, n=10)
    await check_ledger(cluster, minted_for_requesters=5 * 10_000)


async def test_a_database_outage_mid_run_loses_nothing(cluster_with_outage: Cluster) -> None:
    cluster = cluster_with_outage
    assert cluster.outage is not None
    requesters = [await cluster.account(f"requester-{i}", kudos=10_000) for i in range(3)]
    nodes = await make_nodes(cluster, per_process=1)
    request_ids = await post_requests(cluster, requesters, count=30, n=4)
    flow = Flow(target=40)
    flow.running.set()
    tasks = [asyncio.create_task(run_node(node, flow)) for node in nodes]
    await until(flow.reached, tasks, timeout=60)
    await quiesce(flow, nodes, tasks)  # no commit in flight when the database goes

    await cluster.outage.cut()
    await probe_outage(cluster, requesters[0], request_ids[0])
    flow.aim(120)
    flow.running.set()  # nodes keep polling through the outage and get 503s
    await until(flow.unavailable, tasks, timeout=30)
    await cluster.outage.restore()
    await until(flow.reached, tasks, timeout=90)
    await finish(flow, tasks)

    assert sum(node.replies[503] for node in nodes) > 0, "the nodes saw the outage"
    assert sum(node.replies[500] for node in nodes) == 0
    await check_database(cluster, nodes)
    await check_delivered(cluster, request_ids, n=4)
    await check_ledger(cluster, minted_for_requesters=3 * 10_000)


async def quiesce(flow: Flow, nodes: list[Node], tasks: list[asyncio.Task[None]]) -> None:
    flow.running.clear()
    deadline = time.monotonic() + 30
    while not all(node.parked for node in nodes):
        assert time.monotonic() < deadline and not any(task.done() for task in tasks)
        await asyncio.sleep(0.05)


async def probe_outage(cluster: Cluster, apikey: str, request_id: str) -> None:
    """While the database is away every process answers 503 with its rc, never a 500."""
    for index in range(PROCESSES):
        api = cluster.api(index, apikey)
        for reply in (
            await api.get(f"/v2/generate/check/{request_id}"),
            await api.get(f"/v2/generate/status/{request_id}"),
            await api.post("/v2/generate/async", small(1)),
            await api.get("/v2/find_user"),
        ):
            assert (reply.status, reply.rc) == (503, "StorageUnavailable"), reply.body
        heartbeat = await api.get("/v2/status/heartbeat")
        assert heartbeat.status == 200
