"""The TOML settings files the client (`config.toml`) and the node (`horde-node init`) write: one way to
spell a value, and one way to put the file in place. Reading them is the standard library's `tomllib`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from transport.keyfiles import write_secret


def toml_value(value: Any) -> str:
    """A TOML literal for the value types settings use."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"TOML settings must be finite numbers, not {value}")
        return repr(value)
    if isinstance(value, str):
        # JSON string escapes are a subset of TOML basic-string escapes; ensure_ascii=False avoids
        # \\uD83D-style surrogate pairs, which TOML rejects. JSON leaves DEL raw, which TOML forbids.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def write_toml(path: Path, text: str) -> None:
    """Put the file in place atomically, readable by the owner only: both files hold an apikey."""
    write_secret(path, text, replace=True)
