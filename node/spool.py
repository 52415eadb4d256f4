"""The spool: finished results on disk until the coordinator acknowledges them.

A result is written here before its first submit and removed only after a final answer, so a
coordinator outage or a node restart never loses finished work. Each entry is two files,
`<key>.img` (the exact bytes whose hash the node signed) and `<key>.json` (the rest of the
submit). The JSON is written last and is the commit marker: an image without it is debris from
a crash and is swept on open. Keys are per result, not per job: a coordinator may hand a faulted
job out again under the same id, and the new result must never share files with the old one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_SAFE_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,79}$")
_SAFE_KEY = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,199}$")
QUARANTINE = "unreadable"
REJECTED = "rejected"


@dataclass
class SpoolEntry:
    """Everything needed to (re)submit one job's result, except the image bytes."""

    job_id: str
    state: str
    seed: str
    signature: str | None = None
    image_sha256: str | None = None
    censored: bool = False
    gen_metadata: list[dict[str, Any]] = field(default_factory=list)
    r2_upload: str | None = None
    uploaded: bool = False
    model: str = ""
    created_at: float = field(default_factory=time.time)
    key: str = ""

    def __post_init__(self) -> None:
        if not self.key:
            # Readable when the job id is a plain name, unique either way.
            stem = self.job_id if _SAFE_ID.match(self.job_id) else "job"
            self.key = f"{stem}--{uuid.uuid4().hex[:12]}"
        elif not _SAFE_KEY.match(self.key):
            raise ValueError(f"unsafe spool key {self.key!r}")

    @property
    def has_image(self) -> bool:
        return self.image_sha256 is not None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SpoolEntry:
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{key: value for key, value in data.items() if key in known})


class Spool:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._sweep_orphans()

    def put(self, entry: SpoolEntry, image: bytes | None) -> None:
        """Durably store a result: after this returns, a crash or power cut cannot lose it."""
        if entry.has_image:
            if image is None or hashlib.sha256(image).hexdigest() != entry.image_sha256:
                raise ValueError(f"job {entry.job_id}: image bytes do not match the entry's image_sha256")
            # Straight to its own new name (keys are unique): until the entry's JSON commits it, it is
            # debris that opening the spool sweeps. The JSON's directory sync makes both names durable.
            _write_synced(self._image_path(entry), image, exclusive=True)
        self._write_entry(entry)

    def mark_uploaded(self, entry: SpoolEntry) -> None:
        # Remembered so a replay after a restart submits "R2" instead of uploading again.
        entry.uploaded = True
        self._write_entry(entry)

    def image(self, entry: SpoolEntry) -> bytes:
        return self._image_path(entry).read_bytes()

    def pending(self) -> list[SpoolEntry]:
        """The stored entries, oldest first; unreadable ones are moved aside (and logged), not lost."""
        entries = []
        for path in self.folder.glob("*.json"):
            entry = self._read(path)
            if entry is not None:
                entries.append(entry)
        return sorted(entries, key=lambda entry: entry.created_at)

    def remove(self, entry: SpoolEntry) -> None:
        """Forget a settled result. Not synced: an entry a crash brings back is submitted again and
        settled at once (the coordinator answers DuplicateGen or AbortedGen)."""
        for path in (self._entry_path(entry), self._image_path(entry)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def set_aside(self, entry: SpoolEntry) -> Path:
        """Move an entry the coordinator refused for good out of the queue, keeping it for inspection."""
        target = self.folder / REJECTED
        self._move(self._entry_path(entry), target)
        return target

    def __len__(self) -> int:
        return sum(1 for _ in self.folder.glob("*.json"))

    def job_ids(self) -> list[str]:
        return [entry.job_id for entry in self.pending()]

    # -- internals ---------------------------------------------------------------------------------

    def _write_entry(self, entry: SpoolEntry) -> None:
        data = json.dumps(asdict(entry), sort_keys=True).encode("utf-8")
        _write_durably(self._entry_path(entry), data)

    def _read(self, path: Path) -> SpoolEntry | None:
        try:
            entry = SpoolEntry.from_json(json.loads(path.read_text(encoding="utf-8")))
            if entry.key != path.stem:
                raise ValueError(f"the entry's key {entry.key!r} is not its file name")
            if entry.has_image:
                image = self.image(entry)
                if hashlib.sha256(image).hexdigest() != entry.image_sha256:
                    raise ValueError("the image does not match its recorded hash")
        except (OSError, ValueError, TypeError) as exc:
            self._quarantine(path, exc)
            return None
        return entry

    def _quarantine(self, path: Path, why: Exception) -> None:
        target = self.folder / QUARANTINE
        log.error("spool entry %s is unreadable (%s); moved to %s", path.name, why, target)
        self._move(path, target)

    def _move(self, entry_path: Path, target: Path) -> None:
        target.mkdir(exist_ok=True)
        # The image first: a crash in between leaves an entry whose image is gone, which reads as
        # unreadable and is quarantined, rather than an orphan image that would be swept.
        for member in (entry_path.with_suffix(".img"), entry_path):
            with contextlib.suppress(FileNotFoundError):
                member.replace(target / member.name)
        _fsync_dir(self.folder)

    def _sweep_orphans(self) -> None:
        for image in self.folder.glob("*.img"):
            if not image.with_suffix(".json").exists():
                log.info("removing %s: its result was never committed to the spool", image.name)
                image.unlink()
        for tmp in self.folder.glob(".*.tmp"):
            tmp.unlink()

    def _entry_path(self, entry: SpoolEntry) -> Path:
        return self.folder / f"{entry.key}.json"

    def _image_path(self, entry: SpoolEntry) -> Path:
        return self.folder / f"{entry.key}.img"


def _write_durably(path: Path, data: bytes) -> None:
    """Replace `path` atomically and durably (a temporary file, synced, renamed; then the folder)."""
    tmp = path.with_name(f".{path.name}.tmp")
    _write_synced(tmp, data)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _write_synced(path: Path, data: bytes, *, exclusive: bool = False) -> None:
    with open(path, "xb" if exclusive else "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(folder: Path) -> None:
    # The rename is only durable once the directory itself is flushed.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
