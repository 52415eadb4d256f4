"""Summarize a profile of the coordinator: the functions that hold the most samples.

    python bench/hotspots.py PROFILE [--top 25] [--match coordinator/]

PROFILE is either py-spy's collapsed-stack output (`bench/broker.py --profile py-spy`) or a cProfile dump
(`--profile cprofile`). For py-spy it prints "self" (the sampled frame itself) and "inclusive" (anywhere on
the stack) shares, per function, and per thread when the profile was recorded with thread ids.
"""

import argparse
import marshal
import pstats
import re
import sys
from collections import Counter
from pathlib import Path

# Leaf frames where a thread waits rather than works (py-spy cannot always tell idle threads apart in a VM):
# the event loop's epoll, the thread pool's and aiosqlite's queue reads.
IDLE_LEAVES = (
    "EpollSelector.select (selectors.py",
    "_worker (concurrent/futures/thread.py:81)",
    "_connection_worker_thread (aiosqlite/core.py:59)",
    "Thread.wait (threading.py",
)
FRAME = re.compile(r"^(?P<name>.+?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def function_of(frame: str) -> str:
    """`name (file:line)` → `file:name` (lines dropped so one function is one entry)."""
    match = FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match["file"]
    for marker in ("site-packages/", "python3.11/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{path}:{match['name']}"


def collapsed(path: Path, top: int, match: str | None) -> None:
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = idle = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if frames[-1].startswith(IDLE_LEAVES):
            idle += count
            continue
        if frames and frames[0].startswith(("thread (", "process ")):
            threads[frames[0]] += count
            frames = [frame for frame in frames if not frame.startswith(("thread (", "process "))]
        functions = [function_of(frame) for frame in frames]
        total += count
        if functions:
            self_counts[functions[-1]] += count
        for function in set(functions):
            inclusive[function] += count
    print(f"{total} busy samples ({idle} idle samples left out); shares are of busy samples")
    if threads:
        print("\nby thread:")
        for name, count in threads.most_common(10):
            print(f"  {100 * count / total:5.1f}%  {name}")
    for title, counts in (("self", self_counts), ("inclusive", inclusive)):
        print(f"\ntop {top} by {title} samples:")
        shown = 0
        for function, count in counts.most_common():
            if match and match not in function:
                continue
            print(f"  {100 * count / total:5.1f}%  {function}")
            shown += 1
            if shown >= top:
                break


def cprofile(path: Path, top: int, match: str | None) -> None:
    stats = pstats.Stats(str(path))
    stats.strip_dirs()
    for key in ("tottime", "cumulative"):
        print(f"\ntop {top} by {key}:")
        stats.sort_stats(key).print_stats(*([match] if match else []), top)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--match", help="only functions whose file:name contains this")
    args = parser.parse_args()
    try:
        marshal.loads(args.profile.read_bytes())
        is_cprofile = True
    except (ValueError, EOFError, TypeError):
        is_cprofile = False
    (cprofile if is_cprofile else collapsed)(args.profile, args.top, args.match)
    return 0


if __name__ == "__main__":
    sys.exit(main())
