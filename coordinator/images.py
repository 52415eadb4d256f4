"""Images on local disk: results, uploads and source images, each a file named by a random id.

Files are written to a temporary name, flushed to disk and renamed, so a crash never
leaves a half-written image under a name the database points to.
"""

import asyncio
import os
import secrets
from pathlib import Path


class ImageStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"bad image name {name!r}")
        return self.root / name

    @staticmethod
    def new_name(suffix: str = "webp") -> str:
        return f"{secrets.token_urlsafe(18)}.{suffix}"

    async def write(self, name: str, data: bytes) -> None:
        await asyncio.to_thread(self._write_durably, self.path(name), data)

    @staticmethod
    def _write_durably(path: Path, data: bytes) -> None:
        # A temporary name of its own, so two writers of one name never rename each other's file away.
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)

    async def read(self, name: str) -> bytes | None:
        path = self.path(name)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return None

    def exists(self, name: str) -> bool:
        return self.path(name).exists()

    def delete(self, name: str | None) -> None:
        if name:
            self.path(name).unlink(missing_ok=True)
