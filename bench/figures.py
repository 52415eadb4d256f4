"""What a benchmark reports: percentiles and summaries, tables for people, and `Report`, one JSON document
for machines (with `--json`) and an exit status for CI."""

import json
import os
import platform
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench import REPO


@dataclass
class Errors:
    """Every answer that was not 2xx, by `label status rc`, and every exception, by type."""

    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def add(self, key: str, example: Any) -> None:
        self.counts[key] += 1
        self.examples.setdefault(key, str(example)[:300])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.total, "by_kind": dict(self.counts), "examples": self.examples}


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); `values` need not be sorted."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(seconds: Sequence[float]) -> dict[str, float | int]:
    """Count and p50/p95/p99/max/mean, in milliseconds."""
    if not seconds:
        return {"n": 0}
    ms = [value * 1000 for value in seconds]
    return {
        "n": len(ms),
        "p50": round(percentile(ms, 50), 2),
        "p95": round(percentile(ms, 95), 2),
        "p99": round(percentile(ms, 99), 2),
        "max": round(max(ms), 2),
        "mean": round(sum(ms) / len(ms), 2),
    }


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return "-" if value is None else str(value)


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[fmt(value) for value in row] for row in rows]
    widths = [max(len(h), *(len(row[i]) for row in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))
    out = [title, line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(out)


def machine() -> dict[str, Any]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": commit or None,
    }


@dataclass
class Report:
    """What a benchmark found: tables for people, one JSON document for machines, an exit status for CI."""

    benchmark: str
    config: dict[str, Any]
    results: dict[str, Any] = field(default_factory=dict)
    tables: list[str] = field(default_factory=list)
    errors: Errors = field(default_factory=Errors)
    problems: list[str] = field(default_factory=list)  # sanity failures (short mode)
    notes: list[str] = field(default_factory=list)
    load_at_start: list[float] = field(default_factory=lambda: [round(x, 2) for x in os.getloadavg()])

    def emit(self, as_json: bool) -> int:
        host = machine() | {"load_average_at_start": self.load_at_start}
        document = {
            "benchmark": self.benchmark,
            "machine": host,
            "config": self.config,
            "results": self.results,
            "errors": self.errors.as_dict(),
            "problems": self.problems,
            "notes": self.notes,
        }
        text = "\n\n".join(self.tables)
        text += (
            f"\n\nload average (1 min) at start {self.load_at_start[0]}, at end {host['load_average'][0]}"
            f" on {host['cpus']} CPUs"
        )
        if self.notes:
            text += "\n\n" + "\n".join(f"note: {note}" for note in self.notes)
        if self.errors.total:
            text += "\n\nERRORS:\n" + "\n".join(
                f"  {count:6d}  {kind}   e.g. {self.errors.examples[kind]}"
                for kind, count in self.errors.counts.items()
            )
        if self.problems:
            text += "\n\nPROBLEMS:\n" + "\n".join(f"  {problem}" for problem in self.problems)
        if as_json:
            print(text, file=sys.stderr)
            print(json.dumps(document, indent=2))
        else:
            print(text)
        return 1 if self.errors.total or self.problems else 0
