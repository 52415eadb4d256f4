"""`horde generate`, `horde wait`, `horde status` and `horde cancel`."""

from __future__ import annotations

from pathlib import Path

from client import recent
from client.context import Context
from client.errors import CoordinatorUnreachable, HordeClientError, UserError
from client.flow import SaveOptions, WaitOptions, submit, wait_and_save
from client.output import Output
from client.progress import describe
from client.request_builder import GenerateOptions, build_request
from client.sidecar import SavedImage, ensure_folder
from protocol.generation import RequestStatus


def generate_options(ctx: Context) -> GenerateOptions:
    args = ctx.args
    if not args.prompt.strip():
        raise UserError('the prompt is empty: describe the image to make, e.g. horde generate "a lighthouse"')
    return GenerateOptions(
        prompt=args.prompt,
        model=args.model,
        n=args.n,
        size=args.size,
        steps=args.steps,
        sampler=args.sampler,
        cfg=args.cfg,
        seed=args.seed,
        negative=args.negative,
        source_image=args.source_image,
        strength=args.strength,
        mask=args.mask,
        loras=args.lora or [],
        nsfw=args.nsfw,
    )


def wait_options(ctx: Context, total: int | None = None) -> WaitOptions:
    return WaitOptions(
        show_progress=not ctx.output.quiet, cancel_on_interrupt=ctx.args.cancel_on_interrupt, total=total
    )


def save_options(ctx: Context) -> SaveOptions:
    return SaveOptions(out_dir=Path(ctx.args.out), fmt=ctx.args.format)


async def generate(ctx: Context) -> int:
    request = build_request(generate_options(ctx))
    save = save_options(ctx)
    if not ctx.args.no_wait:
        ensure_folder(save.out_dir)  # fail before spending kudos, not after
    async with ctx.client() as client:
        request_id = await submit(client, request, ctx.output)
        recent.remember(request_id, ctx.settings.config_dir)
        if ctx.args.no_wait:
            _print_submitted(ctx.output, request_id)
            return 0
        ctx.output.note(f"submitted request {request_id}")
        body = request.model_dump(mode="json", exclude_none=True)
        try:
            saved = await wait_and_save(
                client, request_id, ctx.output, wait=wait_options(ctx, request.params.n), save=save, request=body
            )
        except CoordinatorUnreachable as exc:  # after the wait (saving): the request and its images are kept
            raise HordeClientError(f"{exc}; the request is kept: `horde wait {request_id}` saves its images") from None
    print_saved(ctx.output, request_id, saved)
    return 0


def request_id(ctx: Context) -> str:
    """The full id of `ctx.args.id`, which may be the short form the display shows."""
    ctx.args.id = recent.resolve(ctx.args.id, ctx.settings.config_dir)
    return str(ctx.args.id)


async def wait(ctx: Context) -> int:
    save = save_options(ctx)
    ensure_folder(save.out_dir)
    request_id(ctx)
    async with ctx.client() as client:
        saved = await wait_and_save(client, ctx.args.id, ctx.output, wait=wait_options(ctx), save=save)
    print_saved(ctx.output, ctx.args.id, saved)
    return 0


async def status(ctx: Context) -> int:
    request_id(ctx)
    async with ctx.client() as client:
        report = await client.status(ctx.args.id)
    _print_status(ctx.output, ctx.args.id, report)
    return 0


async def cancel(ctx: Context) -> int:
    request_id(ctx)
    async with ctx.client() as client:
        report = await client.cancel(ctx.args.id)
    if ctx.output.json:
        ctx.output.emit_json(_status_json(ctx.args.id, report))
        return 0
    kept = len(report.generations)
    ctx.output.line(f"cancelled {ctx.args.id}; {kept} finished image{'s' if kept != 1 else ''} kept")
    if kept:
        ctx.output.note(f"save them with `horde wait {ctx.args.id}`")
    return 0


def _print_submitted(output: Output, request_id: str) -> None:
    if output.json:
        output.emit_json({"id": request_id})
    else:
        output.line(request_id)


def print_saved(output: Output, request_id: str, saved: list[SavedImage]) -> None:
    if output.json:
        output.emit_json({"id": request_id, "images": [item.summary() for item in saved]})
        return
    for item in saved:
        output.line(str(item.image))
    output.note(f"saved {len(saved)} image{'s' if len(saved) != 1 else ''} with JSON sidecars")


def _status_json(request_id: str, report: RequestStatus) -> dict[str, object]:
    # Images are links or (for r2=false) long base64 strings; the JSON keeps links and drops base64.
    data = report.model_dump(mode="json")
    for generation in data["generations"]:
        if not str(generation["img"]).startswith(("http://", "https://")):
            generation["img"] = None
    return {"id": request_id, **data}


def _print_status(output: Output, request_id: str, report: RequestStatus) -> None:
    if output.json:
        output.emit_json(_status_json(request_id, report))
        return
    output.line(f"{request_id}: {describe(report)}")
    for generation in report.generations:
        worker = generation.worker_name or generation.worker_id
        output.line(f"  {generation.id}  seed {generation.seed}  {generation.model}  by {worker}  {generation.state}")
