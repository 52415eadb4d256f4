"""`horde kudos` and `horde transfer`."""

from __future__ import annotations

import math
import time
import uuid

from client.api import HordeClient
from client.context import Context
from client.errors import UserError
from protocol.ledger import LedgerEntry


async def recent_entries(client: HordeClient, account_id: int, limit: int) -> list[LedgerEntry]:
    """The account's last `limit` ledger entries, newest first."""
    if limit <= 0:
        return []
    return await client.user_ledger(account_id, limit)


def signed_amount(entry: LedgerEntry, account_id: int) -> float:
    return entry.amount if entry.target == account_id else -entry.amount


def entry_line(entry: LedgerEntry, account_id: int) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.created))
    amount = f"{signed_amount(entry, account_id):+.2f}"
    reference = f"  {entry.reference}" if entry.reference else ""
    return f"  #{entry.seq:<6} {when}  {entry.kind:<8} {amount:>10}{reference}"


def held_line(held: float, until: float | None) -> str:
    """Escrowed rewards: not spendable until their verification window closes clean."""
    due = f"; the first is released {time.strftime('%Y-%m-%d %H:%M', time.localtime(until))}" if until else ""
    return f"  {held:.2f} kudos held in escrow until your nodes' checks clear{due}"


async def kudos(ctx: Context) -> int:
    async with ctx.client() as client:
        user = await client.find_user()
        entries = await recent_entries(client, user.id, ctx.args.limit)
    if ctx.output.json:
        ctx.output.emit_json(
            {
                "username": user.username,
                "id": user.id,
                "kudos": user.kudos,
                "held_kudos": user.held_kudos,
                "held_until": user.held_until,
                "entries": [entry.model_dump(mode="json") for entry in entries],
            }
        )
        return 0
    ctx.output.line(f"{user.username}: {user.kudos:.2f} kudos available")
    if user.held_kudos:
        ctx.output.line(held_line(user.held_kudos, user.held_until))
    if entries:
        ctx.output.line("recent ledger entries:")
    for entry in entries:
        ctx.output.line(entry_line(entry, user.id))
    return 0


async def transfer(ctx: Context) -> int:
    amount = ctx.args.amount
    if not math.isfinite(amount) or amount <= 0:
        raise UserError(f"AMOUNT must be a positive number of kudos, not {amount:g}")
    # One key per invocation: a retry inside the client after a lost answer cannot pay twice.
    key = ctx.args.idempotency_key or str(uuid.uuid4())
    async with ctx.client() as client:
        result = await client.transfer(ctx.args.user, amount, idempotency_key=key)
    if ctx.output.json:
        ctx.output.emit_json({"transferred": result.transferred, "to": ctx.args.user, "idempotency_key": key})
        return 0
    ctx.output.line(f"transferred {result.transferred:.2f} kudos to {ctx.args.user}")
    ctx.output.note(f"idempotency key {key} (pass --idempotency-key {key} to retry this same transfer)")
    return 0
