"""Shared helpers for tests that need a real diffusion model (a plain module, imported by test files).

The tiny random-weight model is built once per test session into pytest's session temp folder;
every test file's session fixture calls `tiny_model_dir`, which reuses the build already on disk.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from node.catalog import Catalog, ModelSpec
from node.tiny_extras import EXTRAS_INDEX, build_tiny_extras
from node.tiny_model import TINY_MODEL_NAME, build_tiny_model

_READY_MARKER = "model_index.json"


def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's folder: a prebuilt one named by HORDE_TINY_MODEL_DIR, else built once this session."""
    prebuilt = os.environ.get("HORDE_TINY_MODEL_DIR")
    if prebuilt and (Path(prebuilt) / _READY_MARKER).exists():
        return Path(prebuilt)
    folder = tmp_path_factory.getbasetemp() / TINY_MODEL_NAME
    if not (folder / _READY_MARKER).exists():
        # Build beside it and rename, so an interrupted build never looks finished.
        staging = folder.with_name(folder.name + ".building")
        shutil.rmtree(staging, ignore_errors=True)
        build_tiny_model(staging)
        staging.rename(folder)
    return folder


def tiny_extras_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny companions (safety checkers, upscalers, ...): HORDE_TINY_EXTRAS_DIR's, else built once this session."""
    prebuilt = os.environ.get("HORDE_TINY_EXTRAS_DIR")
    if prebuilt and (Path(prebuilt) / EXTRAS_INDEX).exists():
        return Path(prebuilt)
    folder = tmp_path_factory.getbasetemp() / "tiny-extras"
    if not (folder / EXTRAS_INDEX).exists():
        staging = folder.with_name(folder.name + ".building")
        shutil.rmtree(staging, ignore_errors=True)
        build_tiny_extras(staging)
        staging.rename(folder)
    return folder


def tiny_spec(folder: Path, name: str = TINY_MODEL_NAME) -> ModelSpec:
    return ModelSpec(name=name, source=str(folder), baseline="stable_diffusion_1")


def tiny_catalog(folder: Path, *aliases: str) -> Catalog:
    """A catalog serving the tiny model under its own name and any `aliases` (distinct cache entries)."""
    names = (TINY_MODEL_NAME, *aliases)
    return Catalog({name: tiny_spec(folder, name) for name in names})


@contextmanager
def single_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads, and on a busy machine their spin-waits cost seconds."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
