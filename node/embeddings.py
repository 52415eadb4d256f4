"""Textual inversions (AI Horde's `tis`): embedding files from the node's folder, loaded into the text
encoder for one job with diffusers' load_textual_inversion and removed after it.

A TI is named as AI Horde names it (its CivitAI id, say) and found as `<name>.safetensors` in the
folder (no pickled .pt: a file named by the network must not run code). Its token enters the prompt as
AI Horde's workers put it: `inject_ti` "prompt" or "negprompt" prepends it there; without it, the
requester wrote `embedding:<name>` where it belongs. `strength` scales the embedding's vectors (the
effect of AI Horde's `(embedding:name:strength)` weighting, applied to the embedding instead of the
whole conditioning).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline
from safetensors.torch import load_file

from node.jobspec import JobRejected, TiSpec
from node.pipelines import MODULE_BUILD_LOCK

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
# Keys under which published SD 1/2 embeddings keep their vectors (A1111/CivitAI, then diffusers' own).
_VECTOR_KEYS = ("emb_params", "string_to_param")


def ti_files(folder: Path | None, tis: list[TiSpec]) -> list[tuple[TiSpec, Path]]:
    """Each TI's file; JobRejected for one this node does not have."""
    if not tis:
        return []
    if folder is None:
        raise JobRejected("this node does not serve textual inversions")
    files = []
    for ti in tis:
        path = folder / f"{ti.name}.safetensors"
        # The name comes from the network: plain names only, so it cannot climb out of the folder.
        if not _NAME.match(ti.name) or not path.is_file():
            raise JobRejected(f"textual inversion {ti.name!r} is not available on this node")
        files.append((ti, path))
    return files


def token(name: str) -> str:
    return f"<ti-{name}>"


def inject(prompt: str, negative: str | None, tis: list[TiSpec]) -> tuple[str, str | None]:
    """The prompts with each TI's token where AI Horde's workers put it."""
    for ti in tis:
        marker = token(ti.name)
        prompt = prompt.replace(f"embedding:{ti.name}", marker)
        negative = negative.replace(f"embedding:{ti.name}", marker) if negative else negative
        if ti.inject == "prompt":
            prompt = f"{marker}, {prompt}"
        elif ti.inject == "negprompt":
            negative = f"{marker}, {negative}" if negative else marker
    return prompt, negative


@contextmanager
def textual_inversions(pipe: DiffusionPipeline, files: list[tuple[TiSpec, Path]]) -> Iterator[None]:
    """The TIs loaded into the pipeline's (shared) text encoder for the duration, then removed."""
    if not files:
        yield
        return
    if hasattr(pipe, "text_encoder_2"):
        raise JobRejected("textual inversions on SDXL models are not supported by this node")
    before = set(pipe.tokenizer.get_vocab())
    try:
        for ti, path in files:
            vectors = _vectors(load_file(str(path)), ti.name) * ti.strength
            with MODULE_BUILD_LOCK:
                pipe.load_textual_inversion({token(ti.name): vectors}, token=token(ti.name))
        yield
    finally:
        # Multi-vector embeddings add token_1, token_2, ...: remove exactly what was added.
        added = [entry for entry in pipe.tokenizer.get_vocab() if entry not in before]
        if added:
            pipe.unload_textual_inversion(added)


def _vectors(tensors: Mapping[str, Any], name: str) -> torch.Tensor:
    for key in _VECTOR_KEYS:
        if isinstance(tensors.get(key), torch.Tensor):
            return tensors[key]
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    raise JobRejected(f"textual inversion {name!r} is not an SD 1/2 embedding file")
