"""A live coordinator for the conformance suite, run by the project's own interpreter.

The conformance tests run third-party clients (horde-sdk 0.33.3) on Python 3.12, where the
project's dependencies are not installed; so they start this module in the main virtual
environment:

    .venv/bin/python -m conformance.live --engine sqlite|postgresql --data-dir DIR

It starts a real coordinator on a loopback port (the same settings as tests/conftest.py: SQLite
under DIR, or a fresh PostgreSQL database from HORDE_TEST_POSTGRES_DSN), creates the accounts the
tests use, prints one JSON line (`api_url`, the apikeys) and serves until its stdin closes; then
it stops and drops the database.
"""

import argparse
import asyncio
import json
import os
import sys
from contextlib import AsyncExitStack
from pathlib import Path

from tests.conftest import RunningCoordinator, coordinator_config, start_coordinator

REQUESTER_KUDOS = 100_000.0


async def stdin_closed() -> None:
    """Returns when the parent closes our stdin (or dies): read on a thread, which EOF ends."""
    await asyncio.to_thread(sys.stdin.read)


async def serve(engine: str, data_dir: Path) -> None:
    async with AsyncExitStack() as stack:
        database = None
        if engine == "postgresql":
            from tests.pg import fresh_database

            database = await stack.enter_async_context(fresh_database(os.environ["HORDE_TEST_POSTGRES_DSN"]))
        running = await start_coordinator(coordinator_config(data_dir, database))
        stack.push_async_callback(running.stop)
        requester = await running.create_account("conformance-requester", REQUESTER_KUDOS)
        worker = await running.create_account("conformance-worker")
        moderator = await running.create_account("conformance-moderator")
        await make_moderator(running, moderator.id)
        info = {
            "api_url": running.api_url,
            "base_url": running.url,
            "engine": engine,
            "requester_key": requester.apikey,
            "requester_id": requester.id,
            "worker_key": worker.apikey,
            "worker_owner_id": worker.id,
            "moderator_key": moderator.apikey,
            "moderator_id": moderator.id,
        }
        print(json.dumps(info), flush=True)
        await stdin_closed()


async def make_moderator(running: RunningCoordinator, account_id: int) -> None:
    """What the operator's `horde-coordinator moderator NAME` does."""
    await running.broker.moderation.set_moderator(account_id, True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--data-dir", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.engine, args.data_dir))


if __name__ == "__main__":
    main()
