"""The requests this user submitted from this machine, so the short id the display shows works
wherever an id does (`horde status 3f2a9c1d`).

The list is local on purpose: the coordinator never resolves a prefix, so nobody can find another
requester's ids by guessing prefixes. A full id is always accepted as it is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from client.config import config_dir
from client.errors import UserError

FILE_NAME = "requests.json"
KEEP = 200  # the newest ids kept; older ones still work in full
FULL_ID_LENGTH = 36  # a UUID in text form


def path(folder: Path | None = None) -> Path:
    return (folder or config_dir()) / FILE_NAME


def remember(request_id: str, folder: Path | None = None) -> None:
    """Add an id (newest last); a failure to write is not worth failing the request over."""
    target = path(folder)
    ids = [item for item in _read(target) if item != request_id] + [request_id]
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = target.with_suffix(".tmp")
        scratch.write_text(json.dumps(ids[-KEEP:]), encoding="utf-8")
        os.replace(scratch, target)
    except OSError:
        pass


def resolve(given: str, folder: Path | None = None) -> str:
    """The full id for `given`: the one remembered id it starts, else `given` as it is (a full id, or
    one this machine never submitted, which the coordinator judges)."""
    given = given.strip()
    if len(given) >= FULL_ID_LENGTH or not given:
        return given
    matches = [item for item in _read(path(folder)) if item.startswith(given)]
    if len(matches) > 1:
        raise UserError(f"{given!r} starts {len(matches)} of your requests; give more characters")
    return matches[0] if matches else given


def _read(target: Path) -> list[str]:
    try:
        data = json.loads(target.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [item for item in data if isinstance(item, str)] if isinstance(data, list) else []
