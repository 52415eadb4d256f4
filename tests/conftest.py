"""Shared fixtures: a real coordinator on a loopback port over real storage, and the tiny model.

`coordinator` runs in the test's event loop on SQLite in a temporary folder, and also on
PostgreSQL when HORDE_TEST_POSTGRES_DSN is set (each test gets its own fresh database).
"""

import os
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from aiohttp import web

from coordinator.app import create_app
from coordinator.broker import Broker
from coordinator.config import CoordinatorConfig
from coordinator.connections import GuardedRunner
from coordinator.routes.http import BROKER
from coordinator.storage.records import Account
from protocol.keys import PublicKey

if TYPE_CHECKING:
    from tests.api_support import RequesterAndNode

POSTGRES_DSN = os.environ.get("HORDE_TEST_POSTGRES_DSN")


@dataclass
class TestAccount:
    __test__ = False  # a record, not a test class: pytest must not try to collect it

    id: int
    username: str
    apikey: str


@dataclass
class RunningCoordinator:
    url: str
    app: web.Application
    config: CoordinatorConfig
    runner: web.AppRunner

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/"

    @property
    def data_dir(self) -> Path:
        return self.config.data_dir

    @property
    def broker(self) -> Broker:
        return self.app[BROKER]

    @property
    def public_key(self) -> PublicKey:
        return self.broker.services.identity.public_key

    async def create_account(self, username: str, kudos: float = 0.0) -> TestAccount:
        account, apikey = await self.broker.bank.open_account(username)
        if kudos:
            await self.broker.bank.grant(account.id, kudos)
        return TestAccount(account.id, account.username, apikey)

    async def account(self, account_id: int) -> Account:
        return await self.broker.bank.find("id", account_id)

    async def grant(self, account_id: int, amount: float) -> None:
        await self.broker.bank.grant(account_id, amount)

    async def stop(self) -> None:
        await self.runner.cleanup()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def start_coordinator(config: CoordinatorConfig, port: int | None = None) -> RunningCoordinator:
    app = create_app(config)
    runner = GuardedRunner(app)
    await runner.setup()
    port = port or free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return RunningCoordinator(f"http://127.0.0.1:{port}", app, config, runner)


def coordinator_config(data_dir: Path, database: str | None = None) -> CoordinatorConfig:
    """Settings for tests: no rate limits unless a test turns them on, quick upkeep rounds."""
    return CoordinatorConfig(
        data_dir=data_dir,
        database=database,
        rate_limiting=False,
        maintenance_interval=0.2,
        uptime_kudos_per_10_minutes=0,
    )


ENGINES = ["sqlite", "postgresql"]


@pytest.fixture(params=ENGINES)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str | None]:
    """None (SQLite under the data dir) or a fresh PostgreSQL database for this test."""
    if request.param == "sqlite":
        yield None
        return
    if not POSTGRES_DSN:
        pytest.skip("PostgreSQL engine: set HORDE_TEST_POSTGRES_DSN to run (CI always does)")
    from tests.pg import fresh_database

    async with fresh_database(POSTGRES_DSN) as url:
        yield url


@pytest.fixture
async def coordinator(tmp_path: Path, database_url: str | None) -> AsyncIterator[RunningCoordinator]:
    running = await start_coordinator(coordinator_config(tmp_path / "coordinator", database_url))
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
async def pair(coordinator: RunningCoordinator) -> "RequesterAndNode":
    """Requester alice (100 kudos) and node n1 of another account (tests/api_support.py `requester_and_node`)."""
    from tests.api_support import requester_and_node

    return await requester_and_node(coordinator)


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A local S3-compatible server (moto) on a loopback port."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny offline model: the one `make test` built with `horde-node make-tiny-model`, else one built now."""
    from tests.fixtures_models import tiny_model_dir as prepared

    return prepared(tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_extras_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's companions (`horde-node make-tiny-extras`): safety checkers, upscalers, ..."""
    from tests.fixtures_models import tiny_extras_dir as prepared

    return prepared(tmp_path_factory)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """The tiny model runs fastest on one CPU thread: on a busy machine, extra OpenMP threads spin and make each
    image many times slower. Use with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    from tests.fixtures_models import single_torch_thread

    with single_torch_thread():
        yield
