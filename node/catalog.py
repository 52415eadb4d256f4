"""The model catalog: which weights and which architecture each network model name means on this node."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

Baseline = Literal["stable_diffusion_1", "stable_diffusion_2", "stable_diffusion_xl"]
BASELINES: tuple[str, ...] = get_args(Baseline)
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
MODEL_INFO_FILE = "horde-model.json"
DIFFUSERS_INDEX = "model_index.json"
# The hub's own rule for a repo id (huggingface_hub's validate_repo_id), narrowed to owner/name:
# letters, digits, "-", "_", "." in each part, no leading/trailing "-"/".", no "--" or "..".
_HUB_PART = r"(?!.*(?:--|\.\.))[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
HUB_ID = re.compile(rf"^{_HUB_PART}/{_HUB_PART}$")


class UnknownModel(KeyError):
    """The name is in neither the built-in table nor the node's configuration."""


@dataclass(frozen=True)
class ModelSpec:
    """Where a model's weights come from and which pipeline family runs them.

    `source` is a Hugging Face hub repo id, a local diffusers folder, or a single-file
    .safetensors/.ckpt checkpoint.
    """

    name: str
    source: str
    baseline: Baseline
    revision: str | None = None

    @classmethod
    def from_model_dir(cls, folder: Path) -> ModelSpec:
        """A local diffusers folder that describes itself with a horde-model.json {name, baseline}."""
        info = json.loads((Path(folder) / MODEL_INFO_FILE).read_text())
        return _spec_from_entry(str(info.get("name", "")), {**info, "source": str(folder)})

    @property
    def is_single_file(self) -> bool:
        return self.source.lower().endswith(SINGLE_FILE_SUFFIXES)

    @property
    def is_local(self) -> bool:
        return Path(self.source).expanduser().exists()


# Well-known AI Horde model names that have an official diffusers-format repository on the hub.
BUILTIN_MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("stable_diffusion", "stable-diffusion-v1-5/stable-diffusion-v1-5", "stable_diffusion_1"),
        ModelSpec("sd-turbo", "stabilityai/sd-turbo", "stable_diffusion_2"),
        ModelSpec("SDXL 1.0", "stabilityai/stable-diffusion-xl-base-1.0", "stable_diffusion_xl"),
    )
}


class Catalog(Mapping[str, ModelSpec]):
    """Built-in names plus the operator's entries; configured entries win on a name clash."""

    def __init__(self, specs: Mapping[str, ModelSpec] | None = None) -> None:
        self._specs: dict[str, ModelSpec] = {**BUILTIN_MODELS, **(specs or {})}

    @classmethod
    def from_config(cls, entries: Mapping[str, Mapping[str, object]]) -> Catalog:
        """Build from the node config's `{name: {source, baseline, revision?}}` table."""
        return cls({name: _spec_from_entry(name, entry) for name, entry in entries.items()})

    def resolve(self, name: str) -> ModelSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise UnknownModel(name) from None

    def __getitem__(self, name: str) -> ModelSpec:
        return self.resolve(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)


def _spec_from_entry(name: str, entry: Mapping[str, object]) -> ModelSpec:
    source = entry.get("source")
    baseline = entry.get("baseline")
    revision = entry.get("revision")
    if not name:
        raise ValueError("a model entry needs a non-empty name")
    if not isinstance(source, str) or not source:
        raise ValueError(f"model {name!r}: 'source' must be a hub repo id, folder or checkpoint path")
    if baseline not in BASELINES:
        choices = ", ".join(BASELINES)
        raise ValueError(f"model {name!r}: 'baseline' must be one of {choices}, not {baseline!r}")
    if revision is not None and not isinstance(revision, str):
        raise ValueError(f"model {name!r}: 'revision' must be a string")
    return ModelSpec(name=name, source=source, baseline=baseline, revision=revision)  # type: ignore[arg-type]


def source_problem(spec: ModelSpec) -> str | None:
    """Why `spec.source` cannot be what it claims, found before any download or load; None if it looks right.

    A source that exists on disk must be a diffusers folder or a checkpoint file; one that looks like
    a path must exist; anything else must be a well-formed hub id (owner/name).
    """
    path = Path(spec.source).expanduser()
    where = f"model {spec.name!r}: {spec.source}"
    if path.is_dir():
        if (path / DIFFUSERS_INDEX).is_file():
            return None
        return f"{where} is a folder without a diffusers model ({DIFFUSERS_INDEX} is missing)"
    if path.exists():
        return None if spec.is_single_file else f"{where} is not a .safetensors or .ckpt checkpoint"
    if spec.source.startswith(("/", ".", "~")) or spec.is_single_file:
        return f"{where} does not exist; give an existing folder or checkpoint, or a hub id owner/name"
    if not HUB_ID.match(spec.source):
        return f"{where} is neither an existing folder or file nor a hub id of the form owner/name"
    return None


def table_problems(entries: Mapping[str, Mapping[str, object]], names: list[str] | None = None) -> list[str]:
    """Every problem of the configured entries (or of `names` among them), one line each."""
    try:
        catalog = Catalog.from_config(entries)
    except ValueError as exc:
        return [str(exc)]
    chosen = list(entries) if names is None else [name for name in names if name in catalog]
    return [problem for name in chosen if (problem := source_problem(catalog[name])) is not None]
