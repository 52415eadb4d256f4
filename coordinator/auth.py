"""Who is calling: an account by `apikey`, an account or node by RFC 9421 signature, or
the anonymous requester. Every failure is a 401 with its own `rc`."""

import functools
import ipaddress
import time
from dataclasses import dataclass

from aiohttp import web

from coordinator.errors import HordeError, unauthorized
from coordinator.storage import Database
from coordinator.storage.callers import Credentials, Identities, read_apikey
from coordinator.storage.records import Account, Worker
from coordinator.storage.sharedkeys import SharedKey
from coordinator.tokens import ANONYMOUS_APIKEY, Tokens
from protocol import httpsig
from protocol.errors import RC
from protocol.keys import PublicKey

# How far a signature's `created` may be from our clock. A signature verifies for up to twice this
# after it is first seen, so nonces are remembered that long (Database.identities, signature_nonces).
CLOCK_WINDOW = 300
DEFAULT_PORTS = {"http": 80, "https": 443}
INVALID_API_KEY = "No user matching sent API Key. Have you remembered to register?"


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
        digest = self.tokens.apikey_hash(apikey) if apikey and apikey != ANONYMOUS_APIKEY else None
        if httpsig.has_signature(request.headers):
            return await self._signed_caller(request, body, digest, allow_new_key, allow_shared_key)
        if digest is None:
            return Caller(account=None)
        account, shared = await self._account_by_apikey(digest, allow_shared_key)
        return Caller(account=account, sharedkey=shared)

    async def _account_by_apikey(self, digest: str, allow_shared_key: bool) -> tuple[Account, SharedKey | None]:
        async with self.database.reader() as tx:
            return _apikey_account(await read_apikey(tx, digest, allow_shared_key))

    def origin(self, request: web.Request) -> str:
        """The origin every signature must name: the public URL when configured (required behind a
        proxy), else the address this connection reached. Never a header the client controls: a
        target URI rebuilt from `Host` would accept a request signed for another network."""
        return self.public_url or local_origin(request)

    def target_uri(self, request: web.Request) -> str:
        return self.origin(request) + request.path_qs

    async def _signed_caller(
        self, request: web.Request, body: bytes, digest: str | None, allow_new_key: bool, allow_shared_key: bool
    ) -> Caller:
        try:
            signed = self._verify(request, body)
        except HordeError:
            if digest is not None:  # a wrong apikey is named first, as on an unsigned call
                await self._account_by_apikey(digest, allow_shared_key)
            raise
        # The apikey's account, the key's holder and the replay record, in one question (one round trip on
        # PostgreSQL). Asked of the database: with several coordinator processes, one that accepted a
        # request must make the others refuse its replay.
        credentials = Credentials(digest, allow_shared_key, signed.key.text(), signed.nonce, time.time(), allow_new_key)
        found = await self.database.identities(credentials, CLOCK_WINDOW)
        by_key, shared = _apikey_account(found) if digest is not None else (None, None)
        caller = _resolve_key(signed.key, found, by_key, allow_new_key)
        if not found.first_use:
            raise unauthorized(httpsig.SignatureReplay.rc, httpsig.SignatureReplay.message)
        caller.sharedkey = shared
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


def _apikey_account(found: Identities) -> tuple[Account, SharedKey | None]:
    """The account an apikey names (a shared key's: its owner), or the refusal."""
    if found.by_apikey is not None:
        return found.by_apikey, None
    if found.shared is not None and found.shared_owner is not None:
        return found.shared_owner, found.shared
    raise unauthorized(RC.INVALID_API_KEY, INVALID_API_KEY)


def _resolve_key(key: PublicKey, found: Identities, by_key: Account | None, allow_new_key: bool) -> Caller:
    # Nodes sign two calls per image (pop, submit), so a node's key is the first holder looked for.
    if found.worker is not None:
        _one_account(by_key, found.worker.owner_id)
        return Caller(account=by_key or found.worker_owner, key=key, worker=found.worker)
    if found.key_account is not None:
        _one_account(by_key, found.key_account.id)
        return Caller(account=found.key_account, key=key)
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
    # The header itself, never request.host: without one, aiohttp asks DNS for our name (blocking).
    return _origin(request.scheme, sockname[0], sockname[1], request.headers.get("Host"))


@functools.lru_cache(maxsize=256)  # every signed call asks; parsing the address each time was a tenth of a pop
def _origin(scheme: str, host: str, port: int, host_header: str | None) -> str:
    address = ipaddress.ip_address(host.split("%", 1)[0])
    suffix = "" if DEFAULT_PORTS.get(scheme) == port else f":{port}"
    if address.is_loopback and host_header == f"localhost{suffix}":
        return f"{scheme}://localhost{suffix}"
    bracketed = f"[{address}]" if address.version == 6 else str(address)
    return f"{scheme}://{bracketed}{suffix}"


def require_account(caller: Caller, rc: str = RC.ANON_FORBIDDEN) -> Account:
    if caller.account is None:
        raise HordeError(403, rc, "Anonymous callers cannot do this; register an account first.")
    return caller.account
