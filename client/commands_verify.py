"""`horde verify FILE...` (offline; with `--checks`, also the spot-check verdicts) and `horde ledger verify`
(downloads, then checks locally)."""

from __future__ import annotations

from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING

from client.context import Context
from client.errors import UserError
from client.verify import ImageReport, check_ledger, describe_checks, verify_image

if TYPE_CHECKING:
    from client.api import HordeClient
from protocol.keys import KeyFormatError, PublicKey


async def verify(ctx: Context) -> int:
    """Exit 0 only if every file verifies; each problem is printed on its own line. With `--checks`, also
    ask the coordinator whether each image was spot-checked, and check the verdicts' signatures."""
    reports = [verify_image(Path(name), pinned_key=ctx.args.coordinator_key) for name in ctx.args.files]
    checks: dict[Path, list[str]] = {}
    if ctx.args.checks:
        async with ctx.client() as client:
            for report in reports:
                if report.ok and report.job_id:
                    lines, problems = describe_checks(await client.image_checks(report.job_id), report.coordinator_key)
                    checks[report.image] = lines
                    report.problems += problems
    if ctx.output.json:
        found = [{**r.as_json(), **({"checks": checks[r.image]} if r.image in checks else {})} for r in reports]
        ctx.output.emit_json(found[0] if len(found) == 1 else found)
    else:
        for report in reports:
            _print_image_report(ctx, report)
            for line in checks.get(report.image, []):
                ctx.output.line(f"  {line}")
    return 0 if all(report.ok for report in reports) else 1


def _print_image_report(ctx: Context, report: ImageReport) -> None:
    if report.ok:
        by = f"{report.worker_name} ({report.worker_key})" if report.worker_name else report.worker_key
        ctx.output.line(f"{report.image}: OK, made by node {by} for job {report.job_id}")
        ctx.output.note(f"  job signed by coordinator {report.coordinator_key}")
        return
    ctx.output.err.print(f"{report.image}: FAILED", markup=False, highlight=False)
    for problem in report.problems:
        ctx.output.err.print(f"  {problem}", markup=False, highlight=False)


async def ledger_verify(ctx: Context) -> int:
    async with ctx.client() as client:
        key = await _coordinator_key(client, ctx.args.coordinator_key)
        # The head first: entries appended while we download are past it and are ignored.
        head = await client.ledger_head()
        entries = []
        async with aclosing(client.ledger(page_size=ctx.args.page_size)) as stream:
            async for entry in stream:
                entries.append(entry)
                if entry.seq >= head.seq:
                    break
    report = check_ledger(entries, head, key)
    if ctx.output.json:
        ctx.output.emit_json(report.as_json())
    elif report.ok:
        ctx.output.line(f"ledger OK: {report.checked} entries checked; head seq {head.seq} hash {head.hash}")
        ctx.output.note(f"head signed by coordinator {key}")
    else:
        ctx.output.err.print(f"ledger FAILED after {report.checked} good entries:", markup=False)
        for problem in report.problems:
            ctx.output.err.print(f"  {problem}", markup=False, highlight=False)
    return 0 if report.ok else 1


async def _coordinator_key(client: HordeClient, pinned: str | None) -> PublicKey:
    """The pinned key if given, else the one the coordinator advertises."""
    text = pinned or (await client.coordinator_info()).public_key
    try:
        key = PublicKey.from_text(text)
    except KeyFormatError as exc:
        raise UserError(f"coordinator key is not valid: {exc}") from None
    return key
