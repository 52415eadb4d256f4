"""The secret files every party keeps: an Ed25519 identity (`ed25519-secret:...`, protocol/keys.py's
text form) and the coordinator's keyed-hash secret. One way to write them: in full under a 0600
temporary name in the same folder, fsynced, then moved into place, so no reader ever sees a partial
or world-readable file; creating one is atomic, so processes starting at the same moment all end up
with the same secret."""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from pathlib import Path

from protocol.keys import Identity


def save_identity(identity: Identity, path: str | os.PathLike[str]) -> None:
    """Write the secret (mode 0600), atomically replacing any existing file."""
    write_secret(Path(path), identity.secret_text() + "\n", replace=True)


def load_identity(path: str | os.PathLike[str]) -> Identity:
    return Identity.from_secret_text(Path(path).read_text(encoding="ascii"))


def load_or_create_identity(path: str | os.PathLike[str]) -> Identity:
    """Load the key at path, or create it; concurrent creators all end up with the same key."""
    target = Path(path)
    if target.exists():
        return load_identity(target)
    fresh = Identity.generate()
    if write_secret(target, fresh.secret_text() + "\n", replace=False):
        return fresh
    return load_identity(target)


def load_or_create_secret(path: Path) -> bytes:
    """The coordinator's 32-byte keyed-hash secret (hex in the file), created on first start."""
    if not path.exists():
        write_secret(path, secrets.token_bytes(32).hex() + "\n", replace=False)
    return bytes.fromhex(path.read_text().strip())


def write_secret(path: Path, text: str, *, replace: bool) -> bool:
    """Write via a 0600 temp file in the same directory. With replace=False an existing file wins
    and False is returned."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp already uses 0600; fchmod pins it regardless of an unusual umask.
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:  # keys are ASCII; settings files may not be
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        return _publish(tmp, path, replace=replace)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _publish(tmp: str, path: Path, *, replace: bool) -> bool:
    if replace:
        os.replace(tmp, path)
        return True
    try:
        # link() refuses to overwrite, which makes create-if-absent atomic.
        os.link(tmp, path)
    except FileExistsError:
        return False
    return True
