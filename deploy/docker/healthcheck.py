#!/usr/bin/env python3
"""Container health checks for the Horde Network images (standard library only).

    healthcheck.py http [URL]      GET the coordinator's heartbeat; healthy on HTTP 200.
                                   Default URL: http://127.0.0.1:$HORDE_PORT/api/v2/status/heartbeat
    healthcheck.py process NAME    healthy while a live (non-zombie) process runs the command NAME,
                                   e.g. `horde-node` (found as argv[0] or as the script a Python runs)

Exit status 0 means healthy and 1 unhealthy (also for a usage error: Docker reserves 2).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

HEARTBEAT_PATH = "/api/v2/status/heartbeat"


def check_http(url: str | None = None, timeout: float = 4.0) -> tuple[bool, str]:
    if url is None:
        url = f"http://127.0.0.1:{os.environ.get('HORDE_PORT') or '7001'}{HEARTBEAT_PATH}"
    request = urllib.request.Request(url, headers={"Client-Agent": "horde-healthcheck:1:local"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status == 200, f"{url}: HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"{url}: HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        return False, f"{url}: {exc}"


def _runs(pid_dir: Path, name: str) -> bool:
    try:
        argv = (pid_dir / "cmdline").read_bytes().split(b"\0")
        state = (pid_dir / "stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False  # the process ended while we looked, or is not ours to read
    if state in ("Z", "X"):
        return False
    # A console script runs as `python /path/bin/NAME args...`: look at the first two words.
    return any(os.path.basename(word.decode(errors="replace")) == name for word in argv[:2] if word)


def check_process(name: str, proc: Path = Path("/proc")) -> tuple[bool, str]:
    me = str(os.getpid())
    for pid_dir in proc.iterdir():
        if pid_dir.name.isdigit() and pid_dir.name != me and _runs(pid_dir, name):
            return True, f"{name} is running (pid {pid_dir.name})"
    return False, f"no live {name} process"


def main(argv: list[str]) -> int:
    if len(argv) >= 1 and argv[0] == "http" and len(argv) <= 2:
        healthy, detail = check_http(argv[1] if len(argv) == 2 else None)
    elif len(argv) == 2 and argv[0] == "process":
        healthy, detail = check_process(argv[1])
    else:
        print(__doc__, file=sys.stderr)
        return 1
    print(detail)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
