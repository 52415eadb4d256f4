"""The tiny random-weight model: small, fast to load, deterministic, and a real SD1 pipeline."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline
from PIL import Image

from node.catalog import MODEL_INFO_FILE, ModelSpec
from node.tiny_model import TINY_MODEL_NAME, build_tiny_model

PROMPT = "a photo of a cat sitting on a red chair, highly detailed digital painting"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pipe(tiny_model_dir: Path) -> StableDiffusionPipeline:
    loaded = StableDiffusionPipeline.from_pretrained(tiny_model_dir)
    loaded.set_progress_bar_config(disable=True)
    return loaded


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def test_model_is_small_safetensors(tiny_model_dir: Path) -> None:
    assert _folder_bytes(tiny_model_dir) < 20 * 1024 * 1024
    assert list(tiny_model_dir.rglob("*.safetensors"))
    assert not list(tiny_model_dir.rglob("*.bin"))


def test_model_describes_itself(tiny_model_dir: Path) -> None:
    info = json.loads((tiny_model_dir / MODEL_INFO_FILE).read_text())
    assert info == {"name": TINY_MODEL_NAME, "baseline": "stable_diffusion_1"}
    spec = ModelSpec.from_model_dir(tiny_model_dir)
    assert (spec.name, spec.baseline, spec.source) == (TINY_MODEL_NAME, "stable_diffusion_1", str(tiny_model_dir))


def test_loads_quickly_without_safety_checker(tiny_model_dir: Path) -> None:
    started = time.perf_counter()
    loaded = StableDiffusionPipeline.from_pretrained(tiny_model_dir)
    # "Well under a second" on a laptop; the bound leaves room for a loaded CI machine.
    assert time.perf_counter() - started < 5.0
    assert loaded.safety_checker is None


def test_same_build_gives_same_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    again = build_tiny_model(tmp_path / "again")
    for name in ("unet", "vae", "text_encoder"):
        first = next((tiny_model_dir / name).glob("*.safetensors")).read_bytes()
        second = next((again / name).glob("*.safetensors")).read_bytes()
        assert first == second, name


def test_build_leaves_global_rng_alone(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_model(tmp_path / "model")
    assert torch.equal(torch.rand(3), expected)


def test_tokenizer_has_a_real_vocabulary(pipe: StableDiffusionPipeline) -> None:
    tokenizer = pipe.tokenizer
    assert len(tokenizer) > 100
    assert pipe.text_encoder.config.vocab_size == len(tokenizer)
    ids = tokenizer(PROMPT).input_ids
    words = ids[1:-1]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert len(set(words)) >= 10
    # Learned merges: common words are single tokens, not spelled out letter by letter.
    assert len(words) < len(PROMPT.replace(" ", "")) / 2
    assert tokenizer.decode(words) == PROMPT.replace(",", " ,")


def test_tokenizer_encodes_any_text(pipe: StableDiffusionPipeline) -> None:
    # Byte-level BPE: unusual words, digits and emoji become byte tokens, never the unknown token.
    ids = pipe.tokenizer("Zebra-crossing XYZ 42 ünïcode 🙂").input_ids
    assert pipe.tokenizer.unk_token_id not in ids[1:-1]


def test_prompts_are_truncated_to_77_tokens(pipe: StableDiffusionPipeline) -> None:
    assert pipe.tokenizer.model_max_length == 77
    ids = pipe.tokenizer(" ".join(["cat"] * 200), truncation=True).input_ids
    assert len(ids) == 77


def test_txt2img_64px_4_steps(pipe: StableDiffusionPipeline) -> None:
    generator = torch.Generator().manual_seed(0)
    image = pipe(PROMPT, num_inference_steps=4, width=64, height=64, generator=generator).images[0]
    pixels = np.asarray(image)
    assert image.size == (64, 64)
    # Not a flat or saturated picture: the random weights still give varied pixels.
    assert 20 < pixels.std() and 30 < pixels.mean() < 225


def test_runs_the_inpaint_pipeline(tiny_model_dir: Path) -> None:
    inpaint = StableDiffusionInpaintPipeline.from_pretrained(tiny_model_dir)
    inpaint.set_progress_bar_config(disable=True)
    assert inpaint.unet.config.in_channels == 4  # diffusers' latent-blending inpaint mode
    source = Image.new("RGB", (64, 64), (200, 40, 40))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    generator = torch.Generator().manual_seed(0)
    image = inpaint(PROMPT, image=source, mask_image=mask, num_inference_steps=2, generator=generator).images[0]
    assert image.size == (64, 64)
