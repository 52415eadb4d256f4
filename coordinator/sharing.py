"""Shared keys: apikeys an account hands out that spend its kudos within limits, as AI Horde's do.

A request sent with a shared key is its owner's request in every rule of the economy
(coordinator/economy.py): its images are funded from the owner's available balance, a node of the
owner's is paid for them only from the owner to itself (and the key is charged nothing: the owner spent
nothing), and unfunded images earn only the volunteer reward. The key only
narrows it: what its images may be charged in all (`kudos`, less what was charged and what its
unfinished images hold), until when (`expiry`), and how large each image may be. A key can do nothing
but request images (and cancel them): every other call refuses it as an unknown apikey.
"""

import math
import uuid
from datetime import UTC, datetime

from coordinator.auth import Caller, require_account
from coordinator.economy import spendable
from coordinator.errors import HordeError, bad_request, forbidden, not_found
from coordinator.services import Services
from coordinator.storage import sharedkeys as rows
from coordinator.storage.sharedkeys import UNLIMITED, SharedKey
from coordinator.storage.sql import Tx
from protocol.errors import RC
from protocol.generation import GenerationRequest
from protocol.sharedkeys import SharedKeyDetails, SharedKeyInput

KEYS_PER_ACCOUNT = 10  # a bound on every input (docs/security.md); AI Horde's own cap is of this order
DAY = 86400.0


def request_refusal(key: SharedKey, body: GenerationRequest, now: float) -> HordeError | None:
    """Why the key cannot be used for this request at all, whatever the balances; None: it can."""
    if key.expiry is not None and now >= key.expiry:
        return forbidden(RC.SHARED_KEY_EXPIRED, "This shared key has expired; ask its owner for a new one.")
    params = body.params
    if key.max_image_pixels != UNLIMITED and params.width * params.height > key.max_image_pixels:
        return forbidden(
            RC.SHARED_KEY_LIMIT,
            f"This shared key allows at most {key.max_image_pixels} pixels per image; "
            f"{params.width}x{params.height} is {params.width * params.height}.",
        )
    if key.max_image_steps != UNLIMITED and params.steps > key.max_image_steps:
        return forbidden(
            RC.SHARED_KEY_LIMIT, f"This shared key allows at most {key.max_image_steps} steps; {params.steps} asked."
        )
    return None


def key_left(key: SharedKey, reserved: float) -> float | None:
    """Kudos the key may still be charged: its limit less what was charged and what is reserved (None: no limit)."""
    if key.kudos == UNLIMITED:
        return None
    return max(0.0, round(key.kudos - key.utilized - reserved, 2))


def shortfall(left: float | None, total: float, downgrade: bool) -> HordeError | None:
    """Whether a request priced `total` is refused for what its key has left. With `allow_downgrade` it is
    not: the images the key cannot pay for are made unfunded (the volunteer rule), as AI Horde downgrades."""
    if left is None or downgrade or left >= total:
        return None
    if left <= 0:
        return forbidden(
            RC.SHARED_KEY_EMPTY, "This shared key has no kudos left (send allow_downgrade to be served unfunded)."
        )
    return forbidden(
        RC.SHARED_KEY_INSUFFICIENT,
        f"This request costs {total} kudos; this shared key has {left} left (send allow_downgrade to have the "
        "rest made unfunded).",
    )


def details(key_id: str, key: SharedKey, username: str) -> SharedKeyDetails:
    expiry = datetime.fromtimestamp(key.expiry, UTC).isoformat() if key.expiry is not None else None
    return SharedKeyDetails(
        id=key_id,
        username=username,
        name=key.name,
        kudos=key.kudos,
        expiry=expiry,
        utilized=math.ceil(key.utilized - 0.005),
        max_image_pixels=key.max_image_pixels,
        max_image_steps=key.max_image_steps,
        max_text_tokens=key.max_text_tokens,
    )


class SharedKeys:
    def __init__(self, services: Services) -> None:
        self.services = services

    def _hash(self, key_id: str) -> str:
        return self.services.tokens.apikey_hash(key_id)

    async def create(self, caller: Caller, body: SharedKeyInput) -> SharedKeyDetails:
        owner = require_account(caller)
        key_id = str(uuid.uuid4())
        now = self.services.clock()
        key = SharedKey(
            key_hash=self._hash(key_id),
            owner_id=owner.id,
            created=now,
            kudos=body.kudos,
            expiry=None if body.expiry == UNLIMITED else now + body.expiry * DAY,
            name=body.name,
            max_image_pixels=body.max_image_pixels,
            max_image_steps=body.max_image_steps,
            max_text_tokens=body.max_text_tokens,
        )
        async with self.services.database.transaction() as tx:
            if await rows.count_keys(tx, owner.id) >= KEYS_PER_ACCOUNT:
                raise forbidden(RC.FORBIDDEN, f"An account may hold at most {KEYS_PER_ACCOUNT} shared keys.")
            await rows.insert_key(tx, key)
        return details(key_id, key, owner.display_name)

    async def show(self, key_id: str) -> SharedKeyDetails:
        """Anyone who holds the id may read the key's settings and use, as in AI Horde."""
        async with self.services.database.reader() as tx:
            key = await self._find(tx, key_id)
            owner = await tx.account_by("id", key.owner_id)
        return details(key_id, key, owner.display_name if owner else "")

    async def modify(self, caller: Caller, key_id: str, body: SharedKeyInput) -> SharedKeyDetails:
        """Only the fields the owner sent change; `expiry` counts its days from now."""
        owner = require_account(caller)
        sent = body.model_fields_set
        if not sent:
            raise bad_request(RC.VALIDATION, "Send at least one of the shared key's settings to change.")
        async with self.services.database.transaction() as tx:
            key = await self._owned(tx, owner.id, key_id)
            for name in sent - {"expiry"}:
                setattr(key, name, getattr(body, name))
            if "expiry" in sent:
                key.expiry = None if body.expiry == UNLIMITED else self.services.clock() + body.expiry * DAY
            await rows.save_settings(tx, key)
        return details(key_id, key, owner.display_name)

    async def delete(self, caller: Caller, key_id: str) -> None:
        """Requests already made with it keep their funded images (their prices were reserved)."""
        owner = require_account(caller)
        async with self.services.database.transaction() as tx:
            key = await self._owned(tx, owner.id, key_id)
            await rows.delete_key(tx, key.key_hash)

    async def _find(self, tx: Tx, key_id: str) -> SharedKey:
        key = await rows.key_by_hash(tx, self._hash(key_id))
        if key is None:
            raise not_found("shared key", RC.SHARED_KEY_INVALID)
        return key

    async def _owned(self, tx: Tx, owner_id: int, key_id: str) -> SharedKey:
        key = await self._find(tx, key_id)
        if key.owner_id != owner_id:
            raise forbidden(RC.NOT_OWNER, "Only the shared key's owner may change or delete it.")
        return key

    async def left(self, tx: Tx, key: SharedKey) -> float | None:
        """Within a request's transaction: what the key may still be charged (None: no limit), as of now."""
        if key.kudos == UNLIMITED:
            return None
        fresh = await rows.key_by_hash(tx, key.key_hash)
        if fresh is None:  # deleted since the caller was identified
            raise HordeError(401, RC.INVALID_API_KEY, "This shared key was deleted by its owner.")
        return key_left(fresh, await rows.key_reserved(tx, key.key_hash))

    async def spendable(self, tx: Tx, caller: Caller, available: float, total: float, downgrade: bool) -> float:
        """Within a request's transaction: what its images may be funded from (`economy.spendable`); refused
        when its shared key cannot pay `total` and the request did not allow a downgrade."""
        if caller.sharedkey is None:
            return available
        left = await self.left(tx, caller.sharedkey)
        if (refused := shortfall(left, total, downgrade)) is not None:
            raise refused
        return spendable(available, left)
