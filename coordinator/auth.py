"""Who is calling: an account by `apikey`, an account or node by RFC 9421 signature, or
the anonymous requester. Every failure is a 401 with its own `rc`."""

import time
from dataclasses import dataclass

from aiohttp import web

from coordinator.errors import HordeError, unauthorized
from coordinator.storage import Database
from coordinator.storage.records import Account, Worker
from coordinator.tokens import ANONYMOUS_APIKEY, Tokens
from protocol import httpsig
from protocol.errors import RC
from protocol.keys import PublicKey

# How far a signature's `created` may be from our clock. A signature verifies for up to twice this
# after it is first seen, so nonces are remembered that long (NonceCache, signature_nonces).
CLOCK_WINDOW = 300


@dataclass
class Caller:
    account: Account | None  # None: the anonymous requester
    key: PublicKey | None = None  # the key that signed this request
    worker: Worker | None = None  # set when the key belongs to a node

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

    async def identify(self, request: web.Request, body: bytes, *, allow_new_key: bool = False) -> Caller:
        """The caller; `allow_new_key` accepts a valid signature by a key nobody holds yet
        (an account registering it)."""
        apikey = request.headers.get("apikey")
        by_key = await self._account_by_apikey(apikey) if apikey and apikey != ANONYMOUS_APIKEY else None
        if httpsig.has_signature(request.headers):
            return await self._signed_caller(request, body, by_key, allow_new_key)
        return Caller(account=by_key)

    async def _account_by_apikey(self, apikey: str) -> Account:
        async with self.database.reader() as tx:
            account = await tx.account_by("apikey_hash", self.tokens.apikey_hash(apikey))
        if account is None:
            raise unauthorized(RC.INVALID_API_KEY, "No user matching sent API Key. Have you remembered to register?")
        return account

    def target_uri(self, request: web.Request) -> str:
        """The URI the client signed: behind a proxy, the configured public URL's origin."""
        if self.public_url:
            return self.public_url + request.path_qs
        return str(request.url)

    async def _signed_caller(
        self, request: web.Request, body: bytes, by_key: Account | None, allow_new_key: bool
    ) -> Caller:
        try:
            signed = httpsig.verify_request(
                request.method, self.target_uri(request), request.headers, body, max_skew=CLOCK_WINDOW
            )
        except httpsig.SignatureError as error:
            raise unauthorized(error.rc, str(error) or error.message) from error
        caller = await self._resolve_key(signed.key, by_key, allow_new_key)
        # Asked of the database: with several coordinator processes, one that accepted a request
        # must make the others refuse its replay.
        if not await self.database.first_use(signed.key.text(), signed.nonce, time.time(), CLOCK_WINDOW):
            raise unauthorized(httpsig.SignatureReplay.rc, httpsig.SignatureReplay.message)
        return caller

    async def _resolve_key(self, key: PublicKey, by_key: Account | None, allow_new_key: bool) -> Caller:
        # Nodes sign two calls per image (pop, submit), so their keys are looked up first; a node
        # that also sends its owner's apikey (as most do) needs no second lookup for the owner.
        async with self.database.reader() as tx:
            worker = await tx.worker_by("public_key", key.text())
            if worker is not None:
                if by_key is not None and by_key.id != worker.owner_id:
                    raise unauthorized(RC.WRONG_CREDENTIALS, "This node key belongs to another account.")
                owner = by_key or await tx.account_by("id", worker.owner_id)
                return Caller(account=owner, key=key, worker=worker)
            account = await tx.account_by("public_key", key.text())
            if account is not None:
                return Caller(account=account, key=key)
        if by_key is not None or allow_new_key:
            # A node's first signed request: the apikey names the owner; pop binds the key.
            return Caller(account=by_key, key=key)
        raise unauthorized(httpsig.UnknownKey.rc, httpsig.UnknownKey.message)


def require_account(caller: Caller, rc: str = RC.ANON_FORBIDDEN) -> Account:
    if caller.account is None:
        raise HordeError(403, rc, "Anonymous callers cannot do this; register an account first.")
    return caller.account
