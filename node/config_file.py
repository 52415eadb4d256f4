"""The node's config file as `horde-node init` writes it (and `horde-node config` prints it): every
setting with its description as a comment, so the file documents itself. Reading it back, and the
other layers of settings, are node/config.py's."""

from __future__ import annotations

from pathlib import Path

from node.config import NodeConfig
from transport.tomlfile import toml_value, write_toml

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


def write_config(config: NodeConfig, path: Path) -> None:
    """Write atomically, readable by the owner only (it holds the apikey)."""
    write_toml(path, render_toml(config))
