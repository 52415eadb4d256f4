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


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def configured_dtype(device: torch.device, name: str = "auto") -> torch.dtype:
    """The operator's dtype ("auto": `pick_dtype`)."""
    return pick_dtype(device) if name == "auto" else DTYPES[name]


def hardware_class(device: torch.device, dtype: torch.dtype, threads: int | None, image: str) -> str:
    """The node's hardware class, declared in its pops: spot checks compare two images exactly when both
    nodes are of one deterministic class, and by perceptual distance otherwise (coordinator/likeness.py).

    Everything that changes an image's pixels is in it: device, dtype, library versions, CPU threads (a
    matrix product splits its sums by thread), and the image encoding. The CPU repeats an image bit for bit
    for one class (measured in bench/verify.py); a GPU's kernels need not, so it does not claim to.
    """
    import diffusers

    parts = [
        device.type,
        str(dtype).removeprefix("torch."),
        f"torch-{torch.__version__}",
        f"diffusers-{diffusers.__version__}",
        f"threads-{threads or 0}",
        image,
    ]
    return "/".join(parts + (["deterministic"] if device.type == "cpu" else []))


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
