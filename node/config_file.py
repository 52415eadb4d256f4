"""The node's config file as `horde-node init` writes it (and `horde-node config` prints it): every
setting with its description as a comment, so the file documents itself. Reading it back, and the
other layers of settings, are node/config.py's."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from node.config import NodeConfig

_SECTIONS = {
    "coordinator_url": "Network",
    "models": "Work",
    "image_format": "Output",
    "pop_wait": "Faults and pacing",
}


def render_toml(config: NodeConfig) -> str:
    """The whole config file, every setting with its description as a comment.

    Unset optional settings are written commented out, so the file documents them too.
    """
    lines = [
        "# horde-node configuration.",
        "# Every setting can also come from a flag (--setting-name) or an environment variable",
        "# (HORDE_NODE_SETTING_NAME); flags win over the environment, which wins over this file.",
        "# Relative paths are relative to this file's folder.",
    ]
    for name, field in NodeConfig.model_fields.items():
        if name == "catalog":
            continue
        if name in _SECTIONS:
            lines += ["", f"# --- {_SECTIONS[name]} ---"]
        lines.append(f"# {field.description}")
        value = getattr(config, name)
        if value is None and field.default is None:
            lines.append(f'# {name} = ""')
        elif value is None:
            # An explicit empty string turns off a setting whose default is on (key_file).
            lines.append(f'{name} = ""')
        else:
            lines.append(f"{name} = {toml_value(value)}")
    lines += ["", f"# --- Catalog: {NodeConfig.model_fields['catalog'].description} ---"]
    lines += [
        "# source: a Hugging Face repo id, a local diffusers folder or a .safetensors file;",
        '# baseline: "stable_diffusion_1", "stable_diffusion_2" or "stable_diffusion_xl".',
    ]
    for model, entry in config.catalog.items():
        lines += ["", f"[catalog.{toml_value(model)}]"]
        for key, value in entry.model_dump(exclude_none=True).items():
            lines.append(f"{key} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


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
        # \\uD83D-style surrogate pairs, which TOML rejects.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def write_config(config: NodeConfig, path: Path) -> None:
    """Write atomically, readable by the owner only (it holds the apikey)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(render_toml(config))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
