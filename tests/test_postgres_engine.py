"""The PostgreSQL engine on a real server: every SQL primitive, migrations, races between
processes (here: several PostgresDatabase instances on one database), NOTIFY/LISTEN, and
outages. Needs HORDE_TEST_POSTGRES_DSN; the pure helpers run everywhere."""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from coordinator.storage import NameTaken, NotEnoughKudos, StorageUnavailable
from coordinator.storage.migrations import migration_scripts
from coordinator.storage.postgres import PostgresDatabase, affected, numbered
from coordinator.storage.records import JobRecord, QueueEntry, RequestRecord, Worker, WorkerCaps
from protocol.ledger import verify_chain
from tests.conftest import POSTGRES_DSN, free_port
from tests.pg_outage import OutageProxy, with_address

needs_postgres = pytest.mark.skipif(not POSTGRES_DSN, reason="set HORDE_TEST_POSTGRES_DSN")


def test_placeholders_are_numbered_outside_quoted_text() -> None:
    sql = "SELECT '?', \"odd?name\" FROM t WHERE a = ? AND b = 'it''s ?' AND c IN (?, ?)"
    assert numbered(sql) == "SELECT '?', \"odd?name\" FROM t WHERE a = $1 AND b = 'it''s ?' AND c IN ($2, $3)"


def test_affected_rows_come_from_the_command_tag() -> None:
    assert [affected(tag) for tag in ("UPDATE 1", "INSERT 0 3", "DELETE 0", "SELECT 1", "BEGIN")] == [1, 3, 0, 1, 0]


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    if not POSTGRES_DSN:
        pytest.skip("set HORDE_TEST_POSTGRES_DSN")
    from tests.pg import fresh_database

    async with fresh_database(POSTGRES_DSN) as url:
        yield url


@pytest.fixture
async def db(pg_url: str) -> AsyncIterator[PostgresDatabase]:
    database = PostgresDatabase(pg_url)
    await database.open()
    yield database
    await database.close()


async def opened(url: str) -> PostgresDatabase:
    database = PostgresDatabase(url)
    await database.open()
    return database


async def blocked_on_a_lock(url: str, timeout: float = 30) -> None:
    """Until a session of this database waits for a lock another holds (PostgreSQL's own view of it)."""
    import asyncpg

    connection = await asyncpg.connect(url)
    try:
        query = (
            "SELECT COUNT(*) FROM pg_locks JOIN pg_stat_activity USING (pid) "
            "WHERE NOT pg_locks.granted AND pg_stat_activity.datname = current_database()"
        )
        deadline = asyncio.get_running_loop().time() + timeout
        while not await connection.fetchval(query):
            assert asyncio.get_running_loop().time() < deadline, "nothing waited on a lock"
            await asyncio.sleep(0.01)
    finally:
        await connection.close()


def request_record(request_id: str, account_id: int, now: float = 1000.0) -> RequestRecord:
    return RequestRecord(
        id=request_id,
        account_id=account_id,
        created=now,
        updated=now,
        state="active",
        n=2,
        kudos_per_image=1.5,
        body={"prompt": "a cat"},
        tier=1,
        rank=-5.0 * now,
    )


def queue_entry(job_id: str, request_id: str, models: list[str], **demands: bool) -> QueueEntry:
    flags = {
        name: demands.get(name, False)
        for name in ("nsfw", "img2img", "painting", "lora", "post_processing", "trusted_only")
    }
    return QueueEntry(
        job_id=job_id, request_id=request_id, models=models, tier=1, rank=-5000.0, pixels=64 * 64, steps=4, **flags
    )


def caps(models: list[str], **allowed: bool) -> WorkerCaps:
    flags = {
        name: allowed.get(name, False) for name in ("nsfw", "img2img", "painting", "lora", "post_processing", "trusted")
    }
    return WorkerCaps(worker_id="w1", models=models, max_pixels=512 * 512, **flags)


@needs_postgres
async def test_migrations_run_once_when_processes_start_together(pg_url: str) -> None:
    databases = await asyncio.gather(*(opened(pg_url) for _ in range(4)))
    try:
        async with databases[0].reader() as tx:
            versions = await tx.driver.fetchall("SELECT version FROM schema_version ORDER BY version")
        assert versions == [{"version": version} for version, _sql in migration_scripts("postgresql")]
        again = await opened(pg_url)  # a restart finds nothing left to do
        await again.close()
    finally:
        await asyncio.gather(*(database.close() for database in databases))


@needs_postgres
async def test_accounts_and_ledger_primitives(db: PostgresDatabase) -> None:
    async with db.transaction() as tx:
        alice = await tx.create_account("Alice", "hash-a", "ed25519:alice", 1.5)
        bob = await tx.create_account("bob", "hash-b", None, 2.0)
        await tx.move_kudos("admin", None, alice.id, 100, "grant", 3.0)
        entry = await tx.move_kudos("transfer", alice.id, bob.id, 12.345, "t1", 4.0, require_funds=True)
        await tx.remember_transfer(alice.id, "key-1", entry.seq, entry.amount)
        await tx.set_account_trusted(bob.id, True)
    assert isinstance(alice.id, int) and alice.created == 1.5
    with pytest.raises(NameTaken):
        async with db.transaction() as tx:
            await tx.create_account("ALICE", "hash-c", None, 5.0)
    with pytest.raises(NotEnoughKudos):
        async with db.transaction() as tx:
            await tx.move_kudos("transfer", bob.id, alice.id, 1000, "t2", 6.0, require_funds=True)
    async with db.reader() as tx:
        assert (await tx.account_by("username", "aLiCe")).id == alice.id
        assert (await tx.account_by("public_key", "ed25519:alice")).username == "Alice"
        assert (await tx.account_by("apikey_hash", "hash-b")).trusted is True
        assert await tx.cached_hundredths() == {alice.id: 8765, bob.id: 1235}
        assert (await tx.transfer_by_key(alice.id, "key-1"))["ledger_seq"] == entry.seq
        assert [e.seq for e in await tx.account_ledger(bob.id, 10)] == [2]
        seq, head = await tx.ledger_head()
        entries = await tx.ledger_entries(0, 10)
    assert seq == 2 and head == entries[-1].hash  # the failed debit left no entry behind
    assert verify_chain(entries).ok


@needs_postgres
async def test_workers_requests_jobs_and_queue_primitives(db: PostgresDatabase) -> None:
    async with db.transaction() as tx:
        owner = await tx.create_account("owner", "hash-o", None, 1.0)
        worker = replace(
            Worker.new("w1", "Node-1", owner.id, 1.0),
            public_key="ed25519:w1",
            models=["m1"],
            max_pixels=512 * 512,
            bridge_agent="sim",
        )
        await tx.save_worker(worker)
        worker.max_pixels = 1024
        await tx.save_worker(worker)  # an upsert of the same id
        await tx.insert_request(request_record("r1", owner.id))
        jobs = [JobRecord(id=f"j{i}", request_id="r1", index=i, seed=str(i), state="waiting") for i in range(3)]
        await tx.insert_jobs(jobs)
        await tx.enqueue(
            [
                queue_entry("j0", "r1", ["m1", "m2"]),
                queue_entry("j1", "r1", [], nsfw=True),
                queue_entry("j2", "r1", ["m1"]),
            ]
        )
        await tx.enqueue([queue_entry("j0", "r1", ["m1"])])  # already queued: ignored
        await tx.record_stats(7, 1, 2.5)
        await tx.record_stats(7, 2, 0.5)
    with pytest.raises(NameTaken):
        async with db.transaction() as tx:
            await tx.save_worker(Worker(**{**worker.__dict__, "id": "w2", "name": "NODE-1", "public_key": None}))
    async with db.transaction() as tx:
        assert (await tx.worker_by("name", "node-1")).max_pixels == 1024
        assert (await tx.worker_by("public_key", "ed25519:w1")).id == (await tx.worker_by("id", "w1")).id
        assert (await tx.account_by("id", owner.id)).username == "owner"
        assert [w.id for w in await tx.list_workers()] == ["w1"]
        candidates = await tx.queue_candidates(caps(["m1"]))
        assert sorted((row["job_id"], row["model"]) for row in candidates) == [("j0", "m1"), ("j2", "m1")]
        assert {row["job_id"] for row in await tx.queue_candidates(caps(["m9"], nsfw=True))} == {"j1"}
        assert await tx.queue_position(1, -6000.0) == 4  # rows ahead: j0 waits on two models and counts twice
        assert await tx.queued_requests() == 1
        assert sorted((r["model"], r["jobs"], r["pixelsteps"]) for r in await tx.queue_by_model()) == [
            ("", 1, 4096 * 4),
            ("m1", 2, 8192 * 4),
            ("m2", 1, 4096 * 4),
        ]
        assert await tx.queued_pixelsteps() == 3 * 4096 * 4  # j0 waits for two models; it counts once
        assert len(await tx.waiting_of_request("r1", 10)) == 3
        first = await tx.get_job("j0")
        first.state, first.worker_id, first.deadline = "processing", "w1", 50.0
        assert await tx.claim_job(first) is True
        assert await tx.claim_job(first) is False  # no longer waiting
        await tx.lock_ledger()
        current = await tx.settling("j0")  # what a result for it settles against, in one statement
        assert current is not None and current.node is not None
        assert (current.job.state, current.node.id, current.unfinished) == ("processing", "w1", 3)
        assert current.payer is not None and current.payer.id == current.request.account_id
        assert tx._ledger_head == await tx.ledger_head()  # the head it read is the one the next entry follows
        first.gen_metadata, first.faults = [{"type": "censorship"}], 1
        await tx.save_job(first)
        assert (await tx.get_job("j0")).gen_metadata == [{"type": "censorship"}]
        assert [job.index for job in await tx.jobs_by_ids(["j2", "j0"])] == [0, 2]
        assert [job.id for job in await tx.overdue_jobs(60.0)] == ["j0"]
        request = await tx.get_request("r1")
        request.state, request.updated = "done", 70.0
        await tx.update_request(request)
        assert [r.id for r in await tx.finished_requests(80.0)] == ["r1"]
        assert await tx.stale_requests(80.0) == []
        assert await tx.stats_since(7) == (3, 3.0)
        await tx.dequeue_request("r1")
        assert await tx.queue_head(10) == []
        await tx.delete_request("r1")
        await tx.delete_worker("w1")
    async with db.reader() as tx:
        assert await tx.get_request("r1") is None and await tx.jobs_of("r1") == []


@needs_postgres
async def test_a_name_raced_by_two_processes_goes_to_one(pg_url: str) -> None:
    """Both transactions pass the 'is the name free?' read; the unique index picks one."""
    first, second = await opened(pg_url), await opened(pg_url)
    try:
        holder_ready, release = asyncio.Event(), asyncio.Event()

        async def hold_name() -> None:
            async with first.transaction() as tx:
                await tx.create_account("Zed", "hash-1", None, 1.0)
                holder_ready.set()
                await release.wait()

        holder = asyncio.create_task(hold_name())
        await holder_ready.wait()

        async def race() -> None:
            async with second.transaction() as tx:
                await tx.create_account("zed", "hash-2", None, 1.0)

        racer = asyncio.create_task(race())
        await blocked_on_a_lock(pg_url)  # the racer reached the index and waits on the first transaction
        assert not racer.done()
        release.set()
        await holder
        with pytest.raises(NameTaken):
            await racer
    finally:
        await first.close()
        await second.close()


@needs_postgres
async def test_concurrent_ledger_appends_and_claims_across_processes(pg_url: str) -> None:
    databases = [await opened(pg_url) for _ in range(3)]
    try:
        async with databases[0].transaction() as tx:
            payer = await tx.create_account("payer", "hash-p", None, 1.0)
            payee = await tx.create_account("payee", "hash-q", None, 1.0)
            await tx.move_kudos("admin", None, payer.id, 50, "grant", 1.0)
            await tx.insert_request(request_record("r1", payer.id))
            await tx.insert_jobs([JobRecord(id="j0", request_id="r1", index=0, seed="0", state="waiting")])
            await tx.enqueue([queue_entry("j0", "r1", ["m1"])])

        async def pay(database: PostgresDatabase, n: int) -> bool:
            try:
                async with database.transaction() as tx:
                    await tx.move_kudos("transfer", payer.id, payee.id, 1, f"t{n}", 2.0, require_funds=True)
                return True
            except NotEnoughKudos:
                return False

        async def claim(database: PostgresDatabase, n: int) -> bool:
            async with database.transaction() as tx:
                job = await tx.get_job("j0")
                job.state, job.worker_id = "processing", f"w{n}"
                return await tx.claim_job(job)

        paid = await asyncio.gather(*(pay(databases[n % 3], n) for n in range(80)))
        claimed = await asyncio.gather(*(claim(databases[n % 3], n) for n in range(12)))
        assert sum(paid) == 50  # never overdrawn, never a lost update
        assert sum(claimed) == 1
        entries = [entry async for batch in databases[1].iterate_ledger(batch=7) for entry in batch]
        assert verify_chain(entries).ok and len(entries) == 51
        async with databases[2].reader() as tx:
            assert await tx.cached_hundredths() == {payer.id: 0, payee.id: 5000}
    finally:
        await asyncio.gather(*(database.close() for database in databases))


class Inbox:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.arrived = asyncio.Event()

    def __call__(self, channel: str, payload: str) -> None:
        self.events.append((channel, payload))
        self.arrived.set()

    async def next(self, timeout: float = 5.0) -> tuple[str, str]:
        await asyncio.wait_for(self.arrived.wait(), timeout)
        self.arrived.clear()
        return self.events[-1]


@needs_postgres
async def test_announcements_reach_other_processes_but_not_the_sender(pg_url: str) -> None:
    a, b = await opened(pg_url), await opened(pg_url)
    try:
        inbox_a, inbox_b = Inbox(), Inbox()
        await a.listen(inbox_a)
        await b.listen(inbox_b)
        await a.announce("jobs", "request-1")
        assert await inbox_b.next() == ("jobs", "request-1")
        await b.announce("request", "request-2")
        assert await inbox_a.next() == ("request", "request-2")
        assert inbox_a.events == [("request", "request-2")]  # its own "jobs" never came back
    finally:
        await a.close()
        await b.close()


@needs_postgres
async def test_a_transactions_announcements_go_with_its_commit_and_only_if_it_commits(pg_url: str) -> None:
    """`Tx.announce` costs no round trip of its own (it rides in the COMMIT's message), reaches the other
    processes exactly as written, and is never heard from a transaction that rolled back."""
    a, b = await opened(pg_url), await opened(pg_url)
    try:
        inbox = Inbox()
        await b.listen(inbox)
        with pytest.raises(RuntimeError):
            async with a.transaction() as tx:
                await tx.create_account("rolled-back", "hash-r", None, 1.0)
                tx.announce("request", "never")
                raise RuntimeError("the transaction fails")
        with pytest.raises(RuntimeError):
            async with a.transaction() as tx:  # nothing written yet: no BEGIN was sent
                tx.announce("request", "never either")
                raise RuntimeError("the transaction fails")

        async def trips_of_a_write(name: str, announcement: str | None) -> int:
            before = sum(a.round_trips.values())
            async with a.transaction() as tx:
                await tx.create_account(name, f"hash-{name}", None, 1.0)
                if announcement is not None:
                    tx.announce("jobs", announcement)
            return sum(a.round_trips.values()) - before

        tricky = "it's \\ a \"payload\" with $$ quotes'); COMMIT; SELECT ('"
        silent, announced = await trips_of_a_write("silent", None), await trips_of_a_write("heard", tricky)
        assert announced == silent, "the announcement cost a round trip of its own"
        assert await inbox.next() == ("jobs", tricky)
        assert inbox.events == [("jobs", tricky)], "a rolled-back transaction's announcement was heard"
    finally:
        await a.close()
        await b.close()


@needs_postgres
async def test_an_outage_gives_storage_unavailable_and_everything_recovers(pg_url: str) -> None:
    proxy = await OutageProxy(pg_url).start()
    behind, direct = await opened(proxy.url), await opened(pg_url)
    inbox = Inbox()
    try:
        await behind.listen(inbox)
        async with behind.transaction() as tx:
            await tx.create_account("before", "hash-0", None, 1.0)

        with pytest.raises(StorageUnavailable):
            async with behind.transaction() as tx:
                await tx.create_account("half-written", "hash-1", None, 1.0)
                await proxy.cut()  # the server goes away before the commit
        for _ in range(3):  # every later call fails fast the same way, pooled or new connection
            with pytest.raises(StorageUnavailable):
                async with behind.reader() as tx:
                    await tx.account_by("username", "before")
        await behind.announce("jobs", "lost")  # best effort: no exception

        await proxy.restore()
        assert await inbox.next(timeout=15) == ("jobs", "reconnected")  # LISTEN came back by itself
        async with behind.reader() as tx:
            assert (await tx.account_by("username", "before")) is not None
            assert await tx.account_by("username", "half-written") is None  # rolled back, not half-written
        await direct.announce("request", "after")
        assert await inbox.next() == ("request", "after")
    finally:
        await behind.close()
        await direct.close()
        await proxy.stop()


@needs_postgres
async def test_opening_an_unreachable_server_is_storage_unavailable() -> None:
    database = PostgresDatabase(with_address(POSTGRES_DSN or "", "127.0.0.1", free_port()), startup_wait=0)
    with pytest.raises(StorageUnavailable):
        await database.open()


@needs_postgres
async def test_opening_waits_for_a_server_that_is_still_starting(pg_url: str) -> None:
    proxy = await OutageProxy(pg_url).start()
    await proxy.cut()
    database = PostgresDatabase(proxy.url, startup_wait=30)
    refused, first_try = asyncio.Event(), database._open_once

    async def one_try() -> None:
        try:
            await first_try()
        except Exception:
            refused.set()
            raise

    database._open_once = one_try  # type: ignore[method-assign]
    opening = asyncio.create_task(database.open())
    await asyncio.wait_for(refused.wait(), 30)  # a connection was refused...
    assert not opening.done()  # ...and opening waits on
    await proxy.restore()
    await opening
    try:
        async with database.reader() as tx:
            assert (await tx.ledger_head())[0] == 0  # migrated and readable
    finally:
        await database.close()
        await proxy.stop()


@needs_postgres
async def test_a_signed_request_nonce_is_accepted_once_across_processes(pg_url: str) -> None:
    a, b = await opened(pg_url), await opened(pg_url)
    try:
        assert await a.first_use("ed25519:k1", "n1", 1000.0) is True
        assert await b.first_use("ed25519:k1", "n1", 1001.0) is False  # the replay, on another process
        assert await b.first_use("ed25519:k2", "n1", 1001.0) is True  # nonces are per key
        assert await a.first_use("ed25519:k1", "n1", 1000.0 + 601 + 60) is True  # long expired, forgotten
    finally:
        await a.close()
        await b.close()
