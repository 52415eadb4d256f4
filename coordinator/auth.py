"""Who is calling: an account by `apikey`, an account or node by RFC 9421 signature, or
the anonymous requester. Every failure is a 401 with its own `rc`."""

import ipaddress
import time
from dataclasses import dataclass

from aiohttp import web

from coordinator.errors import HordeError, unauthorized
from coordinator.storage import Database
from coordinator.storage.records import Account, Worker
from coordinator.storage.sharedkeys import SharedKey, key_by_hash
from coordinator.tokens import ANONYMOUS_APIKEY, Tokens
from protocol import httpsig
from protocol.errors import RC
from protocol.keys import PublicKey

# How far a signature's `created` may be from our clock. A signature verifies for up to twice this
# after it is first seen, so nonces are remembered that long (Database.first_use, signature_nonces).
CLOCK_WINDOW = 300
DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass
class Caller:
    account: Account | None  # None: the anonymous requester
    key: PublicKey | None = None  # the key that signed this request
    worker: Worker | None = None  # set when the key belongs to a node
    sharedkey: SharedKey | None = None  # set when the apikey is a shared key of `account` (coordinator/sharing.py)

    @property
    def anonymous(self) -> bool:
        return self.account is None

    @property
    def key_text(self) -> str | None:
        return self.key.text() if self.key else None


class Authenticator:
    def __init__(self, database: Database, tokens: Tokens, public_url: str | None) -> None:
        self.database = database
        self.tokens = tokens
        self.public_url = public_url.rstrip("/") if public_url else None

    async def identify(
        self, request: web.Request, body: bytes, *, allow_new_key: bool = False, allow_shared_key: bool = False
    ) -> Caller:
        """The caller; `allow_new_key` accepts a valid signature by a key nobody holds yet
        (an account registering it); `allow_shared_key` accepts a shared key as the apikey (only where
        requesting images: anywhere else it is refused like any unknown apikey)."""
        apikey = request.headers.get("apikey")
        by_key, shared = None, None
        if apikey and apikey != ANONYMOUS_APIKEY:
            by_key, shared = await self._account_by_apikey(apikey, allow_shared_key)
        if httpsig.has_signature(request.headers):
            caller = await self._signed_caller(request, body, by_key, allow_new_key)
            caller.sharedkey = shared
            return caller
        return Caller(account=by_key, sharedkey=shared)

    async def _account_by_apikey(self, apikey: str, allow_shared_key: bool) -> tuple[Account, SharedKey | None]:
        digest = self.tokens.apikey_hash(apikey)
        async with self.database.reader() as tx:
            account, shared = await tx.account_by("apikey_hash", digest), None
            if account is None and allow_shared_key and (shared := await key_by_hash(tx, digest)) is not None:
                account = await tx.account_by("id", shared.owner_id)
        if account is None:
            raise unauthorized(RC.INVALID_API_KEY, "No user matching sent API Key. Have you remembered to register?")
        return account, shared

    def origin(self, request: web.Request) -> str:
        """The origin every signature must name: the public URL when configured (required behind a
        proxy), else the address this connection reached. Never a header the client controls: a
        target URI rebuilt from `Host` would accept a request signed for another network."""
        return self.public_url or local_origin(request)

    def target_uri(self, request: web.Request) -> str:
        return self.origin(request) + request.path_qs

    async def _signed_caller(
        self, request: web.Request, body: bytes, by_key: Account | None, allow_new_key: bool
    ) -> Caller:
        signed = self._verify(request, body)
        caller = await self._resolve_key(signed.key, by_key, allow_new_key)
        # Asked of the database: with several coordinator processes, one that accepted a request
        # must make the others refuse its replay.
        if not await self.database.first_use(signed.key.text(), signed.nonce, time.time(), CLOCK_WINDOW):
            raise unauthorized(httpsig.SignatureReplay.rc, httpsig.SignatureReplay.message)
        return caller

    def _verify(self, request: web.Request, body: bytes) -> httpsig.SignedRequest:
        try:
            return httpsig.verify_request(
                request.method, self.target_uri(request), request.headers, body, max_skew=CLOCK_WINDOW
            )
        except httpsig.SignatureInvalid as error:
            elsewhere = self._signed_origin(request, body)
            if elsewhere is None:
                raise unauthorized(error.rc, str(error)) from error
            raise unauthorized(
                RC.SIGNATURE_WRONG_ORIGIN,
                f"This request was signed for {elsewhere}, not for this coordinator: sign the URL under "
                f"{self.origin(request)} (its --public-url, or the address it listens on).",
            ) from error
        except httpsig.SignatureError as error:
            raise unauthorized(error.rc, str(error) or error.message) from error

    def _signed_origin(self, request: web.Request, body: bytes) -> str | None:
        """The origin a failed signature was made for, if it is the one the `Host` header names:
        only to say why it was refused (a replay from another network, or a missing public URL)."""
        host = request.headers.get("Host")
        if not host:
            return None
        for scheme in ("http", "https"):
            claimed = f"{scheme}://{host}"
            if claimed == self.origin(request):
                continue
            try:
                httpsig.verify_request(
                    request.method, claimed + request.path_qs, request.headers, body, max_skew=CLOCK_WINDOW
                )
            except httpsig.SignatureError:
                continue
            return claimed
        return None

    async def _resolve_key(self, key: PublicKey, by_key: Account | None, allow_new_key: bool) -> Caller:
        # Nodes sign two calls per image (pop, submit), so their keys are looked up first; a node
        # that also sends its owner's apikey (as most do) needs no second lookup for the owner.
        async with self.database.reader() as tx:
            worker = await tx.worker_by("public_key", key.text())
            if worker is not None:
                _one_account(by_key, worker.owner_id)
                owner = by_key or await tx.account_by("id", worker.owner_id)
                return Caller(account=owner, key=key, worker=worker)
            account = await tx.account_by("public_key", key.text())
            if account is not None:
                _one_account(by_key, account.id)
                return Caller(account=account, key=key)
        if by_key is not None or allow_new_key:
            # A node's first signed request: the apikey names the owner; pop binds the key.
            return Caller(account=by_key, key=key)
        raise unauthorized(httpsig.UnknownKey.rc, httpsig.UnknownKey.message)


def _one_account(by_key: Account | None, key_holder_id: int) -> None:
    """An apikey and a signature must name one account (a node key: its owner's). Refused rather
    than resolved to either, so a client that signs with the wrong identity never acts as its
    holder (issue 11, the confused deputy); the message names neither account."""
    if by_key is not None and by_key.id != key_holder_id:
        raise unauthorized(
            RC.APIKEY_SIGNATURE_MISMATCH,
            "The apikey and the request's signature belong to different accounts; send one account's credentials.",
        )


def local_origin(request: web.Request) -> str:
    """`scheme://host:port` of our end of the connection: the address the client dialled (a server
    bound to 0.0.0.0 answers each interface with its own address), the port left out when it is
    the scheme's default, as URL libraries write it. On a loopback connection `localhost` is the
    same origin under another name, so a Host header naming it picks that spelling (it can pick
    nothing else)."""
    sockname = request.get_extra_info("sockname")
    if not isinstance(sockname, tuple):
        return f"{request.scheme}://localhost"  # a Unix socket: there is no address to sign; set a public URL
    address, port = ipaddress.ip_address(sockname[0].split("%", 1)[0]), sockname[1]
    suffix = "" if DEFAULT_PORTS.get(request.scheme) == port else f":{port}"
    # The header itself, never request.host: without one, aiohttp asks DNS for our name (blocking).
    if address.is_loopback and request.headers.get("Host") == f"localhost{suffix}":
        return f"{request.scheme}://localhost{suffix}"
    host = f"[{address}]" if address.version == 6 else str(address)
    return f"{request.scheme}://{host}{suffix}"


def require_account(caller: Caller, rc: str = RC.ANON_FORBIDDEN) -> Account:
    if caller.account is None:
        raise HordeError(403, rc, "Anonymous callers cannot do this; register an account first.")
    return caller.account
