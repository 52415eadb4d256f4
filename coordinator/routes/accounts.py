"""Accounts, kudos and the public ledger."""

from aiohttp import web

from coordinator.auth import require_account
from coordinator.errors import bad_request, not_found
from coordinator.routes.endpoint import Endpoint
from coordinator.routes.http import broker, caller, client_ip, int_query, parse, reply, wants_provenance
from protocol.accounts import (
    AccountCreate,
    AccountCreated,
    KudosTransfer,
    KudosTransferred,
    ModifiedUser,
    ModifyUser,
    UserDetails,
)
from protocol.errors import RC
from protocol.ledger import LedgerHead, LedgerPage

LEDGER_PAGE = 1000
MAX_ACCOUNT_ID = 2**63 - 1


async def create_account(request: web.Request) -> web.Response:
    users = broker(request).users
    users.check_open()  # a closed coordinator says so before it reads anything
    body = await parse(request, AccountCreate)
    who = await caller(request, allow_new_key=True)
    return reply(await users.register(who, body, client_ip(request)))


async def find_user(request: web.Request) -> web.Response:
    account = require_account(await caller(request))
    return reply(await broker(request).users.details(account), ours=wants_provenance(request))


def parse_user_id(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit()):
        raise bad_request(RC.VALIDATION, "A user id is a number.")
    if int(raw) > MAX_ACCOUNT_ID:  # beyond what the database's integer column can even be asked about
        raise not_found("user", RC.USER_NOT_FOUND)
    return int(raw)


async def get_user(request: web.Request) -> web.Response:
    details = await broker(request).users.by_id(parse_user_id(request.match_info["id"]))
    return reply(details, ours=wants_provenance(request))


async def list_users(request: web.Request) -> web.Response:
    """AI Horde's `page` (from 1, 25 accounts each) and `sort` (kudos, the most first; or age, the oldest)."""
    page = int_query(request, "page", 1, 10**6) or 1
    users = await broker(request).users.page(page, request.query.get("sort", "kudos"))
    return reply(users, ours=wants_provenance(request))


async def modify_user(request: web.Request) -> web.Response:
    who = await caller(request)
    change = await parse(request, ModifyUser)
    account_id = parse_user_id(request.match_info["id"])
    return reply(await broker(request).moderation.modify_user(who, account_id, change))


async def transfer(request: web.Request) -> web.Response:
    who = await caller(request)
    body = await parse(request, KudosTransfer)
    account = require_account(who, RC.KUDOS_TRANSFER_TO_ANON)
    key = request.headers.get("Idempotency-Key")
    moved = await broker(request).bank.transfer(account, body.username, body.amount, key)
    return reply(KudosTransferred(transferred=moved))


async def ledger(request: web.Request) -> web.Response:
    after = int_query(request, "after", 0, 2**62)
    limit = int_query(request, "limit", LEDGER_PAGE, LEDGER_PAGE) or LEDGER_PAGE
    entries = await broker(request).bank.ledger_page(after, limit)
    return reply(LedgerPage(entries=entries, next_after=entries[-1].seq if len(entries) == limit else None))


async def user_ledger(request: web.Request) -> web.Response:
    """An account's most recent ledger entries, newest first: a balance's story without the whole ledger."""
    account = await broker(request).bank.find("id", parse_user_id(request.match_info["id"]))
    limit = int_query(request, "limit", 20, LEDGER_PAGE) or 20
    return reply(LedgerPage(entries=await broker(request).bank.recent_entries(account.id, limit), next_after=None))


async def ledger_head(request: web.Request) -> web.Response:
    return reply(await broker(request).bank.signed_head())


ENDPOINTS = [
    Endpoint(
        "POST",
        "/v2/accounts",
        create_account,
        "Register an account; the apikey is shown once.",
        body=AccountCreate,
        response=AccountCreated,
        auth="none",
        example={"username": "alice"},
    ),
    Endpoint("GET", "/v2/find_user", find_user, "The calling account.", response=UserDetails, auth="required"),
    Endpoint("GET", "/v2/users/{id}", get_user, "An account by id.", response=UserDetails),
    Endpoint(
        "GET",
        "/v2/users",
        list_users,
        "Accounts, 25 a page.",
        response=UserDetails,
        many=True,
        query={"page": "page number, from 1", "sort": "kudos (default, the most first) or age (the oldest first)"},
    ),
    Endpoint(
        "PUT",
        "/v2/users/{id}",
        modify_user,
        "A moderator changes an account (kudos, trusted).",
        body=ModifyUser,
        response=ModifiedUser,
        auth="required",
        example={"kudos": 100, "trusted": True},
    ),
    Endpoint(
        "POST",
        "/v2/kudos/transfer",
        transfer,
        "Send kudos (honours Idempotency-Key).",
        body=KudosTransfer,
        response=KudosTransferred,
        auth="required",
        example={"username": "bob", "amount": 10},
    ),
    Endpoint(
        "GET",
        "/v2/ledger",
        ledger,
        "The public kudos ledger, a page at a time.",
        response=LedgerPage,
        query={"after": "sequence number to start after", "limit": "entries per page (≤1000)"},
    ),
    Endpoint(
        "GET",
        "/v2/users/{id}/ledger",
        user_ledger,
        "An account's recent ledger entries, newest first.",
        response=LedgerPage,
        query={"limit": "entries (≤1000, default 20)"},
    ),
    Endpoint(
        "GET", "/v2/ledger/head", ledger_head, "The ledger's head, signed by the coordinator.", response=LedgerHead
    ),
]
