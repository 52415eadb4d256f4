"""Issue 11, case 13: the confused deputy.

A request that carries one account's apikey and another account's signature is refused (401
`ApikeySignatureMismatch`) rather than resolved to either account, and the `horde` CLI never
signs with an identity key for an account other than the one the user named: `--apikey`,
`HORDE_API_KEY` or config.toml of another account go out alone, unsigned, so they spend that
account's kudos and never the key holder's.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from client.config import write_config_file
from protocol.keys import Identity
from tests.api_support import balance, node, register_signed, requester
from tests.conftest import RunningCoordinator, TestAccount
from tests.helpers import Api

ROOT = Path(__file__).resolve().parents[1]
HORDE = Path(sys.executable).with_name("horde")  # the installed console script, as a user runs it
MISMATCH = "ApikeySignatureMismatch"
CLI_TIMEOUT = 60.0
pytestmark = pytest.mark.timeout(180)


async def keyed_account(coordinator: RunningCoordinator, username: str, kudos: float) -> tuple[Identity, TestAccount]:
    """An account registered with its own signing key (proof of possession), funded."""
    identity, reply = await register_signed(coordinator, username)
    assert reply.status == 200, reply.body
    await coordinator.grant(reply.body["id"], kudos)
    return identity, TestAccount(reply.body["id"], username, reply.body["apikey"])


async def kudos_of(coordinator: RunningCoordinator, *accounts: TestAccount) -> list[float]:
    return [await balance(coordinator, account) for account in accounts]


# --- the coordinator -------------------------------------------------------------------------------


async def test_apikey_of_one_account_signed_by_another_is_refused(coordinator: RunningCoordinator) -> None:
    alice = await coordinator.create_account("alice", kudos=100)
    bob = await coordinator.create_account("bob")
    key, keeper = await keyed_account(coordinator, "keeper", 100)
    confused = Api(coordinator.url, apikey=alice.apikey, identity=key)

    refused = await confused.post("/v2/kudos/transfer", {"username": "bob", "amount": 25})
    assert (refused.status, refused.rc) == (401, MISMATCH), refused.body
    assert "keeper" not in refused.body["message"] and str(keeper.id) not in refused.body["message"]
    assert await kudos_of(coordinator, alice, bob, keeper) == [100, 0, 100]
    who = await confused.get("/v2/find_user")
    assert (who.status, who.rc) == (401, MISMATCH)

    # Each credential alone, or both of one account, acts as exactly that account.
    both = Api(coordinator.url, apikey=keeper.apikey, identity=key)
    assert (await both.post("/v2/kudos/transfer", {"username": "bob", "amount": 5})).body == {"transferred": 5}
    signed = Api(coordinator.url, identity=key)
    assert (await signed.post("/v2/kudos/transfer", {"username": "bob", "amount": 5})).body == {"transferred": 5}
    by_apikey = requester(coordinator, alice)
    assert (await by_apikey.post("/v2/kudos/transfer", {"username": "bob", "amount": 1})).body == {"transferred": 1}
    assert await kudos_of(coordinator, alice, bob, keeper) == [99, 11, 90]


async def test_node_key_with_another_accounts_apikey_is_refused(coordinator: RunningCoordinator) -> None:
    owner = await coordinator.create_account("owner")
    eve = await coordinator.create_account("eve", kudos=50)
    await coordinator.create_account("bob")
    worker = node(coordinator, owner, "owners-node")
    assert (await worker.pop()).status == 200  # binds the node's key to owner's worker
    borrowed = Api(coordinator.url, apikey=eve.apikey, identity=worker.api.identity)
    refused = await borrowed.post("/v2/kudos/transfer", {"username": "bob", "amount": 5})
    assert (refused.status, refused.rc) == (401, MISMATCH)
    assert await kudos_of(coordinator, eve, owner) == [50, 0]


# --- the CLI ---------------------------------------------------------------------------------------


@dataclass
class Result:
    rc: int
    out: str
    err: str


@dataclass
class Horde:
    """The `horde` console script in a subprocess, with its own config folder."""

    config_dir: Path
    url: str

    async def __call__(self, *args: str, **env: str) -> Result:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("HORDE_")}
        clean.update(HORDE_CONFIG_DIR=str(self.config_dir), HORDE_URL=self.url, PYTHONPATH=str(ROOT), **env)
        process = await asyncio.create_subprocess_exec(
            str(HORDE),
            *args,
            env=clean,
            cwd=self.config_dir,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT)
        assert process.returncode is not None
        return Result(process.returncode, out.decode(), err.decode())


@pytest.fixture
async def keeper_cli(coordinator: RunningCoordinator, tmp_path: Path) -> tuple[Horde, TestAccount]:
    """A config folder where `horde register keeper` wrote identity.key and config.toml."""
    horde = Horde(tmp_path / "horde-config", coordinator.url)
    horde.config_dir.mkdir()
    registered = await horde("register", "keeper", "--json")
    assert registered.rc == 0, registered.err
    account = json.loads(registered.out)
    await coordinator.grant(account["id"], 100)
    return horde, TestAccount(account["id"], "keeper", account["apikey"])


async def test_cli_apikey_of_another_account_never_spends_the_key_holders_kudos(
    coordinator: RunningCoordinator, keeper_cli: tuple[Horde, TestAccount]
) -> None:
    horde, keeper = keeper_cli
    alice = await coordinator.create_account("alice", kudos=100)
    bob = await coordinator.create_account("bob")

    flagged = await horde("--apikey", alice.apikey, "transfer", "bob", "25")
    assert flagged.rc == 0, flagged.err
    assert "transferred 25.00 kudos to bob" in flagged.out
    assert await kudos_of(coordinator, alice, bob, keeper) == [75, 25, 100]
    assert "not signing" in flagged.err and "identity.key" in flagged.err

    from_env = await horde("transfer", "bob", "10", HORDE_API_KEY=alice.apikey)
    assert from_env.rc == 0, from_env.err
    assert await kudos_of(coordinator, alice, bob, keeper) == [65, 35, 100]

    # config.toml edited by hand to alice's apikey: the key was registered to keeper, not alice.
    write_config_file(horde.config_dir / "config.toml", {"apikey": alice.apikey})
    edited = await horde("transfer", "bob", "5")
    assert edited.rc == 0, edited.err
    assert await kudos_of(coordinator, alice, bob, keeper) == [60, 40, 100]

    # The key still signs for the account it was registered to, whichever way its apikey is named.
    write_config_file(horde.config_dir / "config.toml", {"apikey": keeper.apikey})
    saved = await horde("transfer", "bob", "5")
    named = await horde("--apikey", keeper.apikey, "transfer", "bob", "5")
    assert (saved.rc, named.rc) == (0, 0), (saved.err, named.err)
    assert "not signing" not in saved.err + named.err
    assert await kudos_of(coordinator, alice, bob, keeper) == [60, 50, 90]


def test_identity_signs_only_for_its_registered_apikey(tmp_path: Path) -> None:
    from client.config import identity_binding, resolve  # here, so the module collects on main too

    key = Identity.generate()
    env = {"HORDE_CONFIG_DIR": str(tmp_path)}
    assert resolve(env=env).signs_for(key)  # no apikey anywhere: the key speaks for its own account
    write_config_file(tmp_path / "config.toml", {"apikey": "keepers-key"})
    assert not resolve(env=env).signs_for(key)  # nothing says this key is that apikey's account
    write_config_file(tmp_path / "config.toml", {"identity_binding": identity_binding(key.public_key, "keepers-key")})
    assert resolve(env=env).signs_for(key)
    assert resolve(apikey_flag="keepers-key", env=env).signs_for(key)
    assert not resolve(apikey_flag="alices-key", env=env).signs_for(key)
    assert not resolve(env=env | {"HORDE_API_KEY": "alices-key"}).signs_for(key)
    assert not resolve(env=env).signs_for(Identity.generate())  # a replaced key (`keys new --force`)
