"""`horde webhook verify`: check a received webhook POST offline."""

from __future__ import annotations

import asyncio
from pathlib import Path

from client.context import Context
from client.errors import UserError
from client.webhooks import parse_headers, verify_webhook
from protocol.keys import KeyFormatError, PublicKey


async def webhook_verify(ctx: Context) -> int:
    args = ctx.args
    if args.coordinator_key:
        try:
            PublicKey.from_text(args.coordinator_key)
        except KeyFormatError as error:
            raise UserError(f"--coordinator-key: {error}") from None
    body, header_text = await asyncio.to_thread(_read, Path(args.body), Path(args.headers))
    report = verify_webhook(args.webhook_url, parse_headers(header_text), body, args.coordinator_key)
    if ctx.output.json:
        ctx.output.emit_json(report.as_json())
    elif report.ok:
        ctx.output.line(f"webhook OK: {report.event} of request {report.request_id}, signed by {report.signer}")
    else:
        ctx.output.err.print("webhook FAILED", markup=False, highlight=False)
        for problem in report.problems:
            ctx.output.err.print(f"  {problem}", markup=False, highlight=False)
    return 0 if report.ok else 1


def _read(body: Path, headers: Path) -> tuple[bytes, str]:
    try:
        return body.read_bytes(), headers.read_text(encoding="utf-8")
    except OSError as error:
        raise UserError(f"cannot read {error.filename}: {error.strerror}") from None
