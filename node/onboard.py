"""`horde-node init`: the node key, the pinned coordinator key, optionally a new owner account."""

from __future__ import annotations

import logging
from pathlib import Path

from node.catalog import table_problems
from node.config import NodeConfig
from node.config_file import write_config
from node.console import Console
from node.coordinator_api import ApiError, CoordinatorClient, Unreachable
from protocol.accounts import CoordinatorInfo

EXIT_OK, EXIT_FAILED = 0, 1


async def initialize(config: NodeConfig, path: Path, console: Console, *, register: str | None = None) -> int:
    """Write `path` from `config`, after pinning the coordinator's key and registering if asked."""
    problems = table_problems(config.catalog_table())
    for problem in problems:
        say(console, f"catalog: {problem}", logging.ERROR)
    if problems:
        return EXIT_FAILED  # before registering: fix the command line and run it again as it was
    identity = config.load_identity()
    if identity is not None:
        say(console, f"node key {identity.public_key.text()} ({config.key_path})")
    async with CoordinatorClient(config.coordinator_url, apikey=config.apikey) as client:
        try:
            info = await client.coordinator_info()
            if register:
                account = await client.create_account(register)
                config.apikey = account.apikey
                say(console, f"registered account {account.username} (id {account.id}); apikey stored")
        except (Unreachable, ApiError) as exc:
            if register:
                say(console, f"could not register {register!r}: {exc}", logging.ERROR)
                return EXIT_FAILED
            say(console, f"coordinator not reachable ({exc}); its key is not pinned yet", logging.WARNING)
            info = None
    if info is not None and not pin(config, info, console):
        return EXIT_FAILED
    if info is None:
        say(console, "no /v2/coordinator: this node will run in apikey-only mode", logging.WARNING)
    write_config(config, path)
    say(console, f"wrote {path}")
    if not config.models:
        say(console, "no models yet: set `models` and a [catalog] entry (try `horde-node make-tiny-model`)")
    return EXIT_OK


def pin(config: NodeConfig, info: CoordinatorInfo, console: Console) -> bool:
    pinned = config.coordinator_public_key
    if pinned and pinned != info.public_key:
        # A coordinator whose key changed is either re-keyed or an impostor; only the operator can tell.
        say(
            console,
            f"the coordinator presents {info.public_key} but {pinned} is pinned; if the change is expected, "
            "re-run with --coordinator-public-key set to the new key",
            logging.ERROR,
        )
        return False
    config.coordinator_public_key = info.public_key
    say(console, f"pinned coordinator key {info.public_key} (version {info.version})")
    return True


def say(console: Console, message: str, level: int = logging.INFO) -> None:
    console.event("log", level, message=message)
