"""The node's settings: one pydantic model, layered from defaults, a TOML file, the environment and flags.

Precedence is flags > `HORDE_NODE_*` environment variables > the config file > defaults. Relative
paths in the file (spool, key, LoRA folder, catalog sources) are relative to the file's folder, so a
config folder can be moved as a whole. Writing the file (`horde-node init`) is node/config_file.py's.
"""

from __future__ import annotations

import json
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from protocol.jobs import MAX_LONG_POLL_SECONDS
from protocol.keys import Identity
from transport.keyfiles import load_or_create_identity

ENV_PREFIX = "HORDE_NODE_"
CONFIG_DIR_ENV = "HORDE_NODE_CONFIG_DIR"
CONFIG_FILE_NAME = "config.toml"
DEFAULT_COORDINATOR = "http://127.0.0.1:7001"
DEFAULT_BASELINE = "stable_diffusion_1"

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)


class ConfigError(ValueError):
    """The settings could not be read or do not validate; the message is meant for the operator."""


class CatalogEntry(BaseModel):
    """Where one served model's weights live; see node.catalog for the meaning of the fields."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(min_length=1)
    baseline: str = DEFAULT_BASELINE
    revision: str | None = None


class NodeConfig(BaseModel):
    """Every setting of a node. The descriptions become the config template's comments and `--help`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # Network
    coordinator_url: str = Field(DEFAULT_COORDINATOR, description="The coordinator to work for.")
    name: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-node",
        min_length=1,
        max_length=100,
        description="This node's worker name on the network (unique per coordinator).",
    )
    apikey: str | None = Field(None, description="The owner account's API key; kudos are paid to it.")
    coordinator_public_key: str | None = Field(
        None, description="The coordinator's pinned Ed25519 key; job signatures are checked against it."
    )
    key_file: str | None = Field(
        "node.key",
        description="This node's Ed25519 secret key (mode 0600). Empty = apikey-only mode (nothing signed).",
    )
    # Work
    models: list[str] = Field(default_factory=list, description="Model names to serve (see [catalog]).")
    max_pixels: int = Field(512 * 512, ge=64 * 64, description="Largest width×height accepted.")
    threads: int = Field(1, ge=1, le=16, description="Jobs run at once (one inference thread each).")
    queue_size: int = Field(1, ge=0, le=16, description="Jobs popped ahead while others run.")
    max_batch: int = Field(4, ge=1, le=20, description="Images taken from one request in a single pop.")
    nsfw: bool = Field(False, description="Accept NSFW requests (off: every image is checked, if a checker is set).")
    blacklist: list[str] = Field(
        default_factory=list, max_length=200, description="Prompt words this node never runs (comma separated)."
    )
    safety_checker: str = Field(
        "",
        description='Safety checker weights (hub id such as "CompVis/stable-diffusion-safety-checker", or a '
        "folder); empty = none, and jobs asking for censor_nsfw are not taken.",
    )
    allow_img2img: bool = Field(True, description="Accept img2img requests.")
    allow_painting: bool = Field(True, description="Accept inpainting/outpainting requests.")
    allow_lora: bool = Field(False, description="Accept requests with LoRAs.")
    lora_dir: str = Field("loras", description="Folder of LoRA files.")
    ti_dir: str = Field(
        "embeddings", description="Folder of textual inversions, <AI Horde name>.safetensors (needs allow_lora)."
    )
    controlnet_dir: str = Field(
        "controlnets", description="Folder of SD 1.x ControlNets, one diffusers folder per control type (canny/, ...)."
    )
    post_processor_dir: str = Field(
        "post-processors",
        description="Folder of upscaler and face fixer weights named as AI Horde names them "
        "(RealESRGAN_x4plus.pth, GFPGAN.pth, ...).",
    )
    device: str = Field("auto", description='Torch device: "auto", "cuda", "cuda:1", "mps" or "cpu".')
    torch_threads: int = Field(
        0, ge=0, le=1024, description="CPU threads for torch; 0 = auto (on the CPU: every core but one)."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description='Inference precision; "auto" = float16 on CUDA, float32 elsewhere.'
    )
    memory_budget: str = Field("auto", description='Memory for loaded models, e.g. "6GiB"; "auto" = pick.')
    # Output
    image_format: Literal["webp", "png", "jpeg"] = Field("webp", description="Format of returned images.")
    image_quality: int = Field(95, ge=1, le=100, description="Lossy encoder quality.")
    image_lossless: bool = Field(False, description="Encode WebP losslessly.")
    spool_dir: str = Field("spool", description="Finished results wait here until the coordinator has them.")
    # Faults and pacing
    pop_wait: float = Field(
        50.0, ge=0, le=MAX_LONG_POLL_SECONDS, description="Long-poll seconds per pop (a re-poll costs the coordinator)."
    )
    step_timeout: float = Field(120.0, gt=0, description="Abort a job whose steps stall this many seconds.")
    max_consecutive_faults: int = Field(3, ge=1, description="Faults in a row before popping pauses.")
    fault_pause: float = Field(300.0, ge=0, description="Seconds popping pauses after too many faults.")
    shutdown_grace: float = Field(30.0, ge=0, description="Seconds to keep resubmitting when stopping.")
    max_retry_delay: float = Field(60.0, gt=0, description="Longest wait between retries while unreachable.")
    # Observability
    metrics_port: int | None = Field(None, ge=1, le=65535, description="Serve Prometheus metrics on this port.")
    metrics_address: str = Field("127.0.0.1", description="Address the metrics port binds (0.0.0.0: all).")
    # The last table in the file (TOML tables must come after plain keys).
    catalog: dict[str, CatalogEntry] = Field(
        default_factory=dict, description="Model name → where its weights are and its architecture."
    )

    _base_dir: Path = PrivateAttr(default_factory=lambda: default_config_path().parent)

    @field_validator("key_file", "apikey", "coordinator_public_key", mode="before")
    @classmethod
    def empty_means_unset(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in ("", "none"):
            return None
        return value

    @field_validator("memory_budget")
    @classmethod
    def readable_budget(cls, value: str) -> str:
        parse_size(value)
        return value

    @field_validator("coordinator_url")
    @classmethod
    def http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    def with_base_dir(self, base: Path) -> NodeConfig:
        self._base_dir = Path(base)
        return self

    def path(self, value: str) -> Path:
        """A configured path made absolute against the config folder."""
        candidate = Path(value).expanduser()
        return candidate if candidate.is_absolute() else self._base_dir / candidate

    @property
    def key_path(self) -> Path | None:
        return self.path(self.key_file) if self.key_file else None

    def load_identity(self) -> Identity | None:
        """The node key, created on first use; None (apikey-only mode) when no key file is configured."""
        path = self.key_path
        return load_or_create_identity(path) if path is not None else None

    @property
    def spool_path(self) -> Path:
        return self.path(self.spool_dir)

    @property
    def lora_path(self) -> Path:
        return self.path(self.lora_dir)

    @property
    def ti_path(self) -> Path:
        return self.path(self.ti_dir)

    @property
    def controlnet_path(self) -> Path:
        return self.path(self.controlnet_dir)

    @property
    def post_processor_path(self) -> Path:
        return self.path(self.post_processor_dir)

    @property
    def safety_checker_source(self) -> str:
        """The checker's hub id, or its folder made absolute against the config folder."""
        if not self.safety_checker or not self.path(self.safety_checker).exists():
            return self.safety_checker
        return str(self.path(self.safety_checker))

    @property
    def budget_bytes(self) -> int | None:
        return parse_size(self.memory_budget)

    def catalog_table(self) -> dict[str, dict[str, str]]:
        """The catalog as node.catalog.Catalog.from_config wants it, local sources made absolute."""
        table: dict[str, dict[str, str]] = {}
        for name, entry in self.catalog.items():
            row = entry.model_dump(exclude_none=True)
            # Relative folders are relative to the config file; hub ids ("org/name") don't exist on disk.
            if self.path(entry.source).exists():
                row["source"] = str(self.path(entry.source))
            table[name] = row
        return table


def parse_size(text: str) -> int | None:
    """Bytes from "8GiB", "512MB", "1048576"; None for "auto"."""
    if text.strip().lower() == "auto":
        return None
    found = _SIZE.match(text)
    if not found:
        raise ValueError(f"not a size: {text!r} (use e.g. 6GiB, 512MB or auto)")
    number, unit = float(found.group(1)), (found.group(2) or "").lower()
    base = 1024 if "i" in unit else 1000
    power = "kmgt".find(unit[0]) + 1 if unit[:1] in ("k", "m", "g", "t") else 0
    return int(number * base**power)


# -- where the file is ------------------------------------------------------------------------------


def default_config_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get(CONFIG_DIR_ENV):
        return Path(env[CONFIG_DIR_ENV]).expanduser() / CONFIG_FILE_NAME
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return base / "horde-node" / CONFIG_FILE_NAME


def resolve_config_path(explicit: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None) -> Path:
    """`--config` (a file, or a folder holding config.toml) wins over the environment's folder."""
    if explicit is None:
        return default_config_path(env)
    path = Path(explicit).expanduser()
    return path / CONFIG_FILE_NAME if path.is_dir() else path


# -- the layers -------------------------------------------------------------------------------------


def read_file_layer(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None


def env_layer(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """`HORDE_NODE_<SETTING>` variables: lists are comma separated, the catalog is a JSON object."""
    env = os.environ if env is None else env
    layer: dict[str, Any] = {}
    for field in NodeConfig.model_fields:
        raw = env.get(ENV_PREFIX + field.upper())
        if raw is not None:
            layer[field] = parse_setting_text(field, raw, source=ENV_PREFIX + field.upper())
    return layer


def parse_setting_text(field: str, raw: str, *, source: str) -> Any:
    """One setting from its command-line/environment text form."""
    if field in ("models", "blacklist"):
        return [part.strip() for part in raw.split(",") if part.strip()]
    if field == "catalog":
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{source}: the catalog must be a JSON object: {exc}") from None
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: the catalog must be a JSON object")
        return value
    # pydantic turns "4", "true", "0.5" into the field's type.
    return raw


CATALOG_FLAG_HELP = "serve a model from SOURCE (hub id, folder or .safetensors); repeatable"


def parse_catalog_flag(text: str) -> tuple[str, dict[str, str]]:
    """`NAME=SOURCE[@BASELINE]` from the --catalog flag."""
    name, sep, rest = text.partition("=")
    if not sep or not name.strip() or not rest.strip():
        raise ConfigError(f"--catalog wants NAME=SOURCE[@BASELINE], got {text!r}")
    source, _, baseline = rest.partition("@")
    entry = {"source": source.strip()}
    if baseline.strip():
        entry["baseline"] = baseline.strip()
    return name.strip(), entry


def merge_layers(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Later layers win; the catalog merges per model name so a flag can add one entry."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if key == "catalog" and isinstance(value, Mapping):
                merged["catalog"] = {**merged.get("catalog", {}), **value}
            else:
                merged[key] = value
    return merged


def build_config(values: Mapping[str, Any], base_dir: Path) -> NodeConfig:
    try:
        config = NodeConfig.model_validate(dict(values))
    except ValueError as exc:
        raise ConfigError(_explain(exc)) from None
    return config.with_base_dir(base_dir)


def load_config(
    path: Path, *, env: Mapping[str, str] | None = None, flags: Mapping[str, Any] | None = None
) -> NodeConfig:
    """Defaults < file < environment < flags."""
    values = merge_layers(read_file_layer(path), env_layer(env), flags or {})
    return build_config(values, path.parent)


def _explain(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    lines = []
    for error in errors():
        where = ".".join(str(part) for part in error.get("loc", ())) or "config"
        lines.append(f"{where}: {error.get('msg')}")
    return "invalid settings: " + "; ".join(lines)
