"""Where command output goes: results on stdout (JSON with `--json`), notes and progress on stderr."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from rich.console import Console


def _stdout() -> Console:
    return Console(file=sys.stdout, highlight=False, soft_wrap=True)


def _stderr() -> Console:
    return Console(file=sys.stderr, highlight=False, soft_wrap=True)


@dataclass
class Output:
    json: bool = False
    quiet: bool = False
    out: Console = field(default_factory=_stdout)
    err: Console = field(default_factory=_stderr)

    def emit_json(self, value: Any) -> None:
        """One JSON document on stdout; pydantic models are dumped in JSON mode."""
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json")
        sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")
        sys.stdout.flush()

    def line(self, text: str) -> None:
        """A plain result line on stdout (never markup-interpreted: prompts may hold brackets)."""
        self.out.print(text, markup=False, highlight=False)

    def note(self, text: str) -> None:
        """Commentary on stderr, silenced by --quiet."""
        if not self.quiet:
            self.err.print(text, markup=False, highlight=False)

    def warn(self, text: str) -> None:
        self.err.print(f"warning: {text}", markup=False, highlight=False)
