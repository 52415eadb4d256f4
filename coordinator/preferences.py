"""What a node's pop asks beyond what it can do, as AI Horde's pop fields say it: whose requests it serves
first (`priority_usernames`), whether it takes requests from unsafe addresses (`allow_unsafe_ipaddr`), and
its own refusals (`extra_slow_worker` against a request that wants no slow nodes; its word `blacklist`),
each counted in an empty pop's `skipped` under AI Horde's key.

An address is unsafe when it lies in one of the operator's `--unsafe-networks` (VPNs, proxies, hosting
ranges: this coordinator keeps no reputation of its own); a trusted account's requests never are, as in
AI Horde, which checks only untrusted requesters' addresses.
"""

import ipaddress
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from coordinator.storage import preferences as rows
from coordinator.storage.base import Row
from coordinator.storage.records import RequestRecord, WorkerCaps
from coordinator.storage.sql import Tx

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=16)
def parse_networks(networks: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(network, strict=False) for network in networks)


def is_unsafe(address: str, networks: tuple[str, ...], trusted: bool) -> bool:
    """Whether a request from `address` counts as from an unsafe IP (a trusted requester's never does)."""
    if trusted or not networks:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False  # no address we could judge (a Unix socket, a test client)
    return any(ip in network for network in parse_networks(networks))


UNSAFE_REFUSED = (
    "No online node takes requests from unsafe addresses (allow_unsafe_ipaddr), and this one came from a network "
    "the operator lists as unsafe."
)


def takes_address(request: RequestRecord, allow_unsafe_ip: bool) -> bool:
    """Whether a node with this pop word may get the request, by the address it came from."""
    return allow_unsafe_ip or not request.unsafe_ip


def refusal_reason(request: RequestRecord, caps: WorkerCaps) -> str | None:
    """AI Horde's `skipped` key for a request this node turns down by its pop's own word; None: it takes it."""
    body = request.body
    if caps.extra_slow and (body.get("slow_workers") is False or body.get("extra_slow_workers") is False):
        return "performance"
    if not takes_address(request, caps.allow_unsafe_ip):
        return "unsafe_ip"
    prompt = str(body.get("prompt", "")).lower()
    if any(word and word in prompt for word in caps.blacklist):
        return "blacklist"
    return None


async def favoured_requesters(tx: Tx, names: Iterable[str]) -> tuple[str, ...]:
    """`priority_usernames` as requester keys: AI Horde's `name#id` (both must match) or a bare name;
    names of no account are ignored, as AI Horde ignores them."""
    found = []
    for name in names:
        base, mark, number = name.rpartition("#")
        if mark and number.isascii() and number.isdigit() and len(number) < 19:
            account = await tx.account_by("id", int(number))
            account = account if account and account.username.lower() == base.lower() else None
        else:
            account = await tx.account_by("username", name)
        if account is not None:
            found.append(f"account:{account.id}")
    return tuple(dict.fromkeys(found))


async def favoured_first(tx: Tx, caps: WorkerCaps, candidates: list[Row]) -> list[Row]:
    """The pop's candidates with its favoured requesters' best rows first (each in the queue's order)."""
    if not caps.priority:
        return candidates
    return [*await rows.favoured_rows(tx, caps, caps.priority), *candidates]


async def refused_rows(tx: Tx, queue_rows: list[dict[str, Any]], caps: WorkerCaps) -> dict[str, set[str]]:
    """Among `queue_rows`, the jobs this node turns down (`refusal_reason`), by reason."""
    requests = await rows.requests_by_ids(tx, sorted({row["request_id"] for row in queue_rows}))
    reasons = {request.id: refusal_reason(request, caps) for request in requests}
    refused: dict[str, set[str]] = {}
    for row in queue_rows:
        if reason := reasons.get(row["request_id"]):
            refused.setdefault(reason, set()).add(row["job_id"])
    return refused
