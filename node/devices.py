"""Choosing the torch device and dtype the node runs inference on."""

from __future__ import annotations

import os

import torch


def pick_device(configured: str | None = None) -> torch.device:
    """The operator's configured device if any, else CUDA, then Apple MPS, then CPU."""
    if configured:
        return torch.device(configured)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(device: torch.device) -> torch.dtype:
    """fp16 on CUDA halves memory at no visible quality cost; elsewhere fp16 is slow or unsupported."""
    return torch.float16 if device.type == "cuda" else torch.float32


def torch_threads(device: torch.device, configured: int = 0) -> int | None:
    """How many CPU threads torch should use; None keeps torch's default.

    On the CPU, torch's default is one thread per core, and its threads spin between operations:
    the node's own event loop (popping, signing, spooling, uploading) then preempts one of them,
    and every parallel step waits for it. Measured on 2 cores: 2.9× slower than one thread. So a
    CPU node leaves one core to the rest; on a GPU the CPU threads hardly matter.
    """
    if configured:
        return configured
    if device.type != "cpu":
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores - 1)
