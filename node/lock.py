"""One daemon per config and per spool: two daemons sharing them would serve jobs with one key and
name and race on the same spool files.

The lock is an advisory `flock` on a small file holding the holder's pid. The kernel releases it when
the process ends, however it ends, so a crashed daemon never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from node.config import ConfigError

LOCK_NAME = ".horde-node.lock"


def folder_lock(folder: Path) -> Path:
    return folder / LOCK_NAME


def file_lock(file: Path) -> Path:
    return file.with_name(f"{file.name}.lock")


@contextlib.contextmanager
def exclusive(path: Path, what: str) -> Iterator[None]:
    """Hold the lock file `path` for the block; ConfigError naming the holder's pid when another has it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise ConfigError(
                f"{what} is in use by another `horde-node run` (pid {holder}); stop that one first, or give "
                "this one its own config (--config) and spool_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (deleting it would race a starting daemon)
