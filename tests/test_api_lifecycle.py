"""Jobs and requests over time: reissue after a missed deadline, expiry, pruning, and a hard restart."""

import asyncio
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from coordinator import admin, app, cli
from coordinator.app import open_services
from coordinator.bank import Bank
from coordinator.config import CoordinatorConfig
from coordinator.logs import LIBRARIES, StructuredFormatter, configure_logging
from coordinator.storage import StorageUnavailable
from tests.api_support import (
    RequesterAndNode,
    balance,
    count,
    custom_coordinator,
    expire_job,
    fetch_one,
    generate,
    job_state,
    ledger_rows,
    node,
    parked,
    pop_job,
    requester,
    seed_of,
    small,
)
from tests.conftest import RunningCoordinator, coordinator_config, start_coordinator
from tests.helpers import Api, SimWorker, tiny_webp


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> bool:
    """Poll `check()` (an async callable) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.05)


async def test_missed_deadline_reissues_to_another_node(coordinator: RunningCoordinator) -> None:
    alice = await coordinator.create_account("alice", kudos=100)
    api = requester(coordinator, alice)
    request_id = await generate(api, small())
    owner = await coordinator.create_account("owner")
    slow, quick = node(coordinator, owner, "slow"), node(coordinator, owner, "quick")
    first = await pop_job(slow)
    job_id = first.body["ids"][0]
    await expire_job(coordinator, job_id)
    # The upkeep loop (every 0.2 s in tests) puts the job back in the queue for anyone.
    second = await pop_job(quick, wait=10)
    assert second.body["ids"] == [job_id]
    assert second.body["jobs"][0]["document"]["worker_id"] != first.body["jobs"][0]["document"]["worker_id"]
    check = (await api.get(f"/v2/generate/check/{request_id}")).body
    assert check["restarted"] == 1 and check["processing"] == 1

    late = await slow.submit(job_id, seed_of(first))
    assert late.status == 400 and late.rc == "AbortedGen"
    assert await balance(coordinator, owner) == 0
    assert (await quick.submit(job_id, seed_of(second))).status == 200
    status = (await api.get(f"/v2/generate/status/{request_id}")).body
    assert status["done"] is True
    assert [g["worker_name"] for g in status["generations"]] == ["quick"]
    # The late node's result, sent again after the job finished, is still refused.
    again = await slow.submit(job_id, seed_of(first))
    assert again.status == 400 and again.rc == "AbortedGen"
    worker = await fetch_one(coordinator, "SELECT info FROM workers WHERE name = 'slow'")
    assert '"missed_deadlines": 1' in worker["info"]


async def test_in_flight_job_of_a_cancelled_request_is_not_reissued(
    coordinator: RunningCoordinator, pair: RequesterAndNode
) -> None:
    alice, api, owner = pair.alice, pair.api, pair.owner
    request_id = await generate(api, small(n=2))
    slow, other = node(coordinator, owner, "slow"), node(coordinator, owner, "other")
    first = await pop_job(slow)
    assert (await api.call("DELETE", f"/v2/generate/status/{request_id}")).status == 200
    await expire_job(coordinator, first.body["ids"][0])
    await coordinator.broker.upkeep.reissue_overdue()
    assert (await other.pop()).body["ids"] == []
    assert await job_state(coordinator, first.body["ids"][0]) == "cancelled"
    check = (await api.get(f"/v2/generate/check/{request_id}")).body
    assert check["done"] is True and check["processing"] == 0 and check["waiting"] == 0
    assert await balance(coordinator, alice) == 100


async def test_fault_on_a_cancelled_request_does_not_requeue(
    coordinator: RunningCoordinator, pair: RequesterAndNode
) -> None:
    api, worker = pair.api, pair.worker
    request_id = await generate(api, small())
    popped = await pop_job(worker)
    assert (await api.call("DELETE", f"/v2/generate/status/{request_id}")).status == 200
    assert (await worker.submit(popped.body["ids"][0], seed_of(popped), state="faulted")).status == 200
    assert (await worker.pop()).body["ids"] == []
    assert await count(coordinator, "queue") == 0


async def test_three_missed_deadlines_put_a_node_in_maintenance(
    coordinator: RunningCoordinator, pair: RequesterAndNode
) -> None:
    api, owner = pair.api, pair.owner
    sleepy = node(coordinator, owner, "sleepy")
    for _ in range(3):
        await generate(api, small())
        popped = await pop_job(sleepy)
        await expire_job(coordinator, popped.body["ids"][0])
        await coordinator.broker.upkeep.reissue_overdue()
    workers = (await Api(coordinator.url).get("/v2/workers")).body
    assert [w["maintenance_mode"] for w in workers if w["name"] == "sleepy"] == [True]
    refused = await sleepy.pop()  # AI Horde's answer, saying why (tests/test_abuse_faults.py)
    assert (refused.status, refused.rc) == (403, "WorkerMaintenance") and "missed 3" in refused.body["message"]


async def test_requests_expire_when_nobody_serves_them(tmp_path: Path, database_url: str | None) -> None:
    async with custom_coordinator(tmp_path, database_url, request_expiry_seconds=0.5) as coordinator:
        alice = await coordinator.create_account("alice", kudos=100)
        api = requester(coordinator, alice)
        request_id = await generate(api, small(models=["nobody-serves-this"]))

        async def faulted() -> bool:
            return (await api.get(f"/v2/generate/check/{request_id}")).body["faulted"]

        assert await eventually(faulted)
        assert await count(coordinator, "queue") == 0
        assert await balance(coordinator, alice) == 100
        owner = await coordinator.create_account("owner")
        assert (await node(coordinator, owner, "late", models=["nobody-serves-this"]).pop()).body["ids"] == []


async def test_pruning_removes_old_requests_and_images_but_not_the_ledger(
    tmp_path: Path, database_url: str | None
) -> None:
    async with custom_coordinator(
        tmp_path, database_url, retention_hours=1.0, maintenance_interval=3600
    ) as coordinator:
        alice = await coordinator.create_account("alice", kudos=100)
        api = requester(coordinator, alice)
        old_id = await generate(api, small())
        owner = await coordinator.create_account("owner")
        worker = node(coordinator, owner, "n1")
        await worker.serve_one()
        recent_id = await generate(api, small())
        await worker.serve_one()
        old_status = (await api.get(f"/v2/generate/status/{old_id}")).body
        image_url = old_status["generations"][0]["img"]
        image_name = image_url.rsplit("/", 1)[1]
        assert await coordinator.broker.services.images.exists(image_name)
        ledger_before = await ledger_rows(coordinator)
        # Age the first request past the retention period.
        services = coordinator.broker.services
        async with services.database.transaction() as tx:
            await tx.driver.execute("UPDATE requests SET updated = ? WHERE id = ?", (services.clock() - 7200, old_id))
        assert await coordinator.broker.upkeep.prune() == 1
        assert (await api.get(f"/v2/generate/status/{old_id}")).rc == "RequestNotFound"
        assert not await services.images.exists(image_name)
        async with aiohttp.ClientSession() as session, session.get(image_url) as response:
            assert response.status == 404
        assert (await api.get(f"/v2/generate/status/{recent_id}")).body["done"] is True
        assert await ledger_rows(coordinator) == ledger_before
        assert (await coordinator.broker.bank.audit()).ok


# --- a real process, killed hard --------------------------------------------------------


def start_process(data_dir: Path, database_url: str | None) -> tuple[subprocess.Popen, str]:
    port_file = data_dir.parent / f"port-{time.monotonic_ns()}"
    command = [sys.executable, "-m", "coordinator.cli", "--data-dir", str(data_dir)]
    command += ["--db", database_url] if database_url else []
    command += [
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--port-file",
        str(port_file),
        "--no-rate-limits",
        "--uptime-kudos",
        "0",
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parent.parent
    )
    deadline = time.monotonic() + 30
    while not (port_file.exists() and port_file.read_text().strip()):
        if process.poll() is not None:
            raise AssertionError(f"coordinator exited: {process.stderr.read().decode() if process.stderr else ''}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("coordinator did not start")
        time.sleep(0.05)
    return process, f"http://127.0.0.1:{port_file.read_text().strip()}"


async def offline(data_dir: Path, database_url: str | None, work: Callable[[Bank], Awaitable[Any]]) -> Any:
    """Run `work` on the coordinator's bank while no coordinator is serving, as the admin CLI does."""
    services = await open_services(CoordinatorConfig(data_dir=data_dir, database=database_url))
    try:
        return await work(Bank(services))
    finally:
        await services.database.close()


async def open_funded(bank: Bank, name: str, kudos: float) -> str:
    account, apikey = await bank.open_account(name)
    await bank.grant(account.id, kudos)
    return apikey


def kill_hard(process: subprocess.Popen) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


async def test_restart_after_kill_loses_nothing(tmp_path: Path, database_url: str | None) -> None:
    data_dir = tmp_path / "data"
    # Accounts made through the CLI, as an operator would.
    alice_key = await offline(data_dir, database_url, lambda bank: open_funded(bank, "alice", 100))
    process, url = await asyncio.to_thread(start_process, data_dir, database_url)
    try:
        api = Api(url, apikey=alice_key)
        owner = await api.post("/v2/accounts", {"username": "owner"})
        assert owner.status == 200, owner.body
        worker = SimWorker(Api(url, apikey=owner.body["apikey"]), "n1", sign=False)
        done_id = await generate(api, small(n=2))
        image = tiny_webp((7, 7, 7))
        stored = []
        for _ in range(2):
            popped = await worker.pop()
            assert (await worker.submit(popped.body["ids"][0], seed_of(popped), image=image)).status == 200
            stored.append(popped.body["ids"][0])
        waiting_id = await generate(api, small(n=3))
        in_flight = await worker.pop()
        in_flight_job = in_flight.body["ids"][0]
        transfer = await api.post("/v2/kudos/transfer", {"username": "owner", "amount": 1.5})
        assert transfer.status == 200
        ledger_before = (await api.get("/v2/ledger")).body["entries"]
        status_before = (await api.get(f"/v2/generate/status/{done_id}")).body
    finally:
        kill_hard(process)

    if database_url is None:  # the job's time limit passes while the coordinator is down
        with sqlite3.connect(data_dir / "horde.db") as db:
            db.execute("UPDATE jobs SET deadline = ? WHERE id = ?", (time.time() - 1, in_flight_job))
    else:
        import asyncpg

        connection = await asyncpg.connect(database_url)
        try:
            await connection.execute("UPDATE jobs SET deadline = $1 WHERE id = $2", time.time() - 1, in_flight_job)
        finally:
            await connection.close()

    process, url = await asyncio.to_thread(start_process, data_dir, database_url)
    try:
        api = Api(url, apikey=alice_key)
        assert (await api.get("/v2/ledger")).body["entries"] == ledger_before
        status_after = (await api.get(f"/v2/generate/status/{done_id}")).body
        assert status_after["done"] is True
        assert sorted(g["id"] for g in status_after["generations"]) == sorted(stored)
        assert [g["image_sha256"] for g in status_after["generations"]] == [
            g["image_sha256"] for g in status_before["generations"]
        ]
        async with aiohttp.ClientSession() as session:
            for generation in status_after["generations"]:
                async with session.get(generation["img"].replace(generation["img"].split("/api/")[0], url)) as r:
                    assert await r.read() == image
        check = (await api.get(f"/v2/generate/check/{waiting_id}")).body
        assert check["finished"] == 0 and check["waiting"] + check["processing"] == 3
        # The in-flight job went back to the queue when its time ran out; another node gets it (never
        # the one that missed its deadline).
        worker = SimWorker(Api(url, apikey=worker.api.apikey), "n2", sign=False)
        handed: set[str] = set()
        for _ in range(3):
            popped = await worker.pop(wait=10)
            assert popped.status == 200 and popped.body["ids"], popped.body
            handed.update(popped.body["ids"])
            assert (await worker.submit(popped.body["ids"][0], seed_of(popped))).status == 200
        assert in_flight_job in handed
        final = (await api.get(f"/v2/generate/status/{waiting_id}")).body
        assert final["done"] is True and final["finished"] == 3 and final["restarted"] == 1
        me = (await api.get("/v2/find_user")).body
        price = (status_before["kudos"]) / 2
        assert me["kudos"] == pytest.approx(100 - 1.5 - 5 * price)
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(process.wait, 30)
    report = await offline(data_dir, database_url, lambda bank: bank.audit())
    assert report.ok, report.problems


# --- starting up -------------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """`cli.main` configures the process's loggers; put them back for the tests that follow."""
    loggers = [logging.getLogger(name) for name in ("horde", *LIBRARIES)]
    saved = [(logger.handlers[:], logger.level, logger.propagate) for logger in loggers]
    yield
    for logger, (handlers, level, propagate) in zip(loggers, saved, strict=True):
        logger.handlers[:], logger.level, logger.propagate = handlers, level, propagate


@pytest.mark.parametrize("command", [["audit"], ["serve", "--host", "127.0.0.1", "--port", "0"]])
def test_an_unreachable_database_is_a_one_line_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    restore_logging: None,
    command: list[str],
) -> None:
    async def unreachable(config: CoordinatorConfig) -> None:
        raise StorageUnavailable("cannot reach PostgreSQL: connection refused")

    monkeypatch.setattr(admin, "open_services", unreachable)  # admin commands
    monkeypatch.setattr(app, "open_services", unreachable)  # serve
    (tmp_path / "secret.key").write_bytes(b"")  # an existing data dir: admin commands refuse a missing one
    assert cli.main(["--data-dir", str(tmp_path), *command]) == 1
    assert capsys.readouterr().err == "error: cannot reach PostgreSQL: connection refused\n"


def test_logging_formats_asyncpg_too(restore_logging: None) -> None:
    configure_logging("warning", as_json=True)
    asyncpg_logger = logging.getLogger("asyncpg")
    assert asyncpg_logger.level == logging.WARNING and not asyncpg_logger.propagate
    assert [type(handler.formatter) for handler in asyncpg_logger.handlers] == [StructuredFormatter]


def test_images_setting_names_a_folder_or_a_bucket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    folder = cli.config_from(cli.parser().parse_args(["serve", "--images", str(tmp_path / "images")]))
    assert (folder.images_dir, folder.images_bucket) == (tmp_path / "images", None)
    monkeypatch.setenv("HORDE_IMAGES_DIR", "s3://bucket/horde")
    monkeypatch.setenv("HORDE_S3_ENDPOINT_URL", "http://minio:9000")
    monkeypatch.setenv("HORDE_S3_PUBLIC_URL", "https://images.example.org")
    bucket = cli.config_from(cli.parser().parse_args(["serve"]))
    assert (bucket.images_dir, bucket.images_bucket) == (None, "s3://bucket/horde")
    assert (bucket.s3_endpoint_url, bucket.s3_public_url) == ("http://minio:9000", "https://images.example.org")
    with pytest.raises(SystemExit) as stopped:
        cli.main(["--data-dir", str(tmp_path), "serve", "--images", "s3:///no-bucket"])
    assert stopped.value.code == 2 and "not an s3://bucket[/prefix] URL" in capsys.readouterr().err


async def test_trusting_a_proxy_without_a_public_url_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("horde.coordinator")
    logger.addHandler(caplog.handler)  # whatever an earlier test did to propagation
    try:
        async with custom_coordinator(tmp_path / "a", None, trust_forwarded_for=True):
            pass
        assert any("HORDE_PUBLIC_URL is not set" in record.getMessage() for record in caplog.records)
        caplog.clear()
        async with custom_coordinator(tmp_path / "b", None, trust_forwarded_for=True, public_url="https://h.example"):
            pass
        assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
    finally:
        logger.removeHandler(caplog.handler)


async def test_shutdown_answers_open_long_polls_at_once(tmp_path: Path) -> None:
    """Stopping the coordinator does not wait out a node's or a requester's 30 s long-poll."""
    running = await start_coordinator(coordinator_config(tmp_path / "c"))
    owner = await running.create_account("owner")
    alice = await running.create_account("alice", kudos=50)
    request_id = await generate(requester(running, alice), small(models=["other-model"]))
    worker = node(running, owner, "n1")
    assert (await worker.pop()).status == 200
    pop = asyncio.create_task(worker.pop(wait=30))
    check = asyncio.create_task(requester(running, alice).get(f"/v2/generate/check/{request_id}?wait=30"))
    await parked(running, "pop:n1")
    await parked(running, f"check:{request_id}")
    started = time.monotonic()
    # Well under the 30 s the long-polls asked for: shutdown must not wait them out.
    await asyncio.wait_for(running.stop(), 10)
    await asyncio.wait_for(asyncio.gather(pop, check, return_exceptions=True), 5)
    print(f"shutdown with two open long-polls took {time.monotonic() - started:.2f} s")
    assert pop.result().status == 200 and pop.result().body["ids"] == []
    assert check.result().status == 200 and check.result().body["waiting"] == 1
