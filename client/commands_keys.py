"""`horde keys new|show` and `horde register`: the user's identity and account."""

from __future__ import annotations

from pathlib import Path

from client.api import HordeClient
from client.config import BINDING, identity_binding, load_identity, write_config_file
from client.context import Context
from client.errors import UserError
from protocol.keys import Identity
from transport.keyfiles import load_or_create_identity, save_identity


async def keys_new(ctx: Context) -> int:
    path = ctx.settings.identity_file
    if path.exists() and not ctx.args.force:
        current = load_identity(path).public_key.text()
        raise UserError(f"an identity already exists at {path} ({current}); --force replaces it for good")
    identity = Identity.generate()
    try:
        save_identity(identity, path)
    except OSError as exc:
        raise UserError(f"cannot write identity file {path}: {exc.strerror or exc}") from None
    _show(ctx, identity, created=True)
    return 0


async def keys_show(ctx: Context) -> int:
    identity = ctx.settings.load_identity()
    if identity is None:
        raise UserError(f"no identity at {ctx.settings.identity_file}; create one with `horde keys new`")
    _show(ctx, identity, created=False)
    return 0


def _show(ctx: Context, identity: Identity, *, created: bool) -> None:
    public_key = identity.public_key.text()
    path = ctx.settings.identity_file
    if ctx.output.json:
        ctx.output.emit_json({"public_key": public_key, "path": str(path), "created": created})
        return
    ctx.output.line(public_key)
    ctx.output.note(f"{'created' if created else 'identity'}: {path}")


async def register(ctx: Context) -> int:
    """Create an account bound to the user's key (made now if missing) and remember its apikey."""
    path = ctx.settings.identity_file
    existed = path.exists()
    identity = load_identity(path) if existed else _create_identity(path)
    if not existed:
        ctx.output.note(f"created a new identity at {path}")
    # No stored apikey goes along: it may belong to another account on this or another coordinator.
    async with HordeClient(ctx.settings.url, identity=identity) as client:
        account = await client.register(ctx.args.username)
    # The binding says which account the key signs for: a different apikey later goes out unsigned.
    saved = {
        "url": ctx.settings.url,
        "apikey": account.apikey,
        BINDING: identity_binding(identity.public_key, account.apikey),
    }
    try:
        write_config_file(ctx.settings.config_file, saved)
    except OSError as exc:
        # The apikey is shown only once: losing it here would lose the account's key-less access.
        raise UserError(
            f"registered {account.username} but cannot save {ctx.settings.config_file} ({exc.strerror or exc}); "
            f"keep this apikey: {account.apikey}"
        ) from None
    if ctx.output.json:
        ctx.output.emit_json(account)
        return 0
    ctx.output.line(f"registered {account.username} (id {account.id}) at {ctx.settings.url}")
    ctx.output.note(f"apikey saved to {ctx.settings.config_file}; requests are signed with {path}")
    return 0


def _create_identity(path: Path) -> Identity:
    try:
        return load_or_create_identity(path)
    except OSError as exc:
        raise UserError(f"cannot create identity file {path}: {exc.strerror or exc}") from None
