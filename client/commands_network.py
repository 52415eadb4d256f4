"""`horde workers` and `horde models`: what the network has online now."""

from __future__ import annotations

from rich.table import Table

from client.context import Context
from client.progress import format_seconds


async def workers(ctx: Context) -> int:
    async with ctx.client() as client:
        found = await client.workers()
    if ctx.output.json:
        ctx.output.emit_json([worker.model_dump(mode="json") for worker in found])
        return 0
    if not found:
        ctx.output.line("no workers are registered")
        return 0
    table = Table("name", "id", "online", "models", "performance", "done", "max size", box=None)
    for worker in sorted(found, key=lambda item: (not item.online, item.name.lower())):
        table.add_row(
            worker.name,
            worker.id,
            "yes" if worker.online else "no",
            ", ".join(worker.models) or "-",
            worker.performance,
            str(worker.requests_fulfilled),
            f"{worker.max_pixels} px",
        )
    ctx.output.out.print(table)
    return 0


async def models(ctx: Context) -> int:
    async with ctx.client() as client:
        found = await client.models()
    if ctx.output.json:
        ctx.output.emit_json([model.model_dump(mode="json") for model in found])
        return 0
    if not found:
        ctx.output.line("no model is being served right now")
        return 0
    table = Table(
        "model",
        "workers",
        "speed MPS/s",
        "queued jobs",
        "queued MPS",
        "ETA",
        "first image p50/p95",
        "done p50/p95",
        box=None,
    )
    for model in sorted(found, key=lambda item: (-item.count, item.name.lower())):
        table.add_row(
            model.name,
            str(model.count),
            f"{model.performance:.2f}",
            str(model.jobs),
            f"{model.queued / 1e6:.1f}",
            format_seconds(model.eta),
            service_level(model.time_to_first_image_p50, model.time_to_first_image_p95),
            service_level(model.time_to_done_p50, model.time_to_done_p95),
        )
    ctx.output.out.print(table)
    return 0


def service_level(p50: float | None, p95: float | None) -> str:
    """Measured over the coordinator's recent window; '-' before any result."""
    if p50 is None or p95 is None:
        return "-"
    return f"{format_seconds(round(p50))} / {format_seconds(round(p95))}"
