"""Tiny random-weight companions of the tiny SD pipeline: a safety checker, upscalers, a face fixer, a
textual inversion and a ControlNet, each in the format its real counterpart ships in, so the node loads them
through the same code that loads real weights.

Built seeded, so two builds are identical. `extras.json` lists what was built and is written last: a
folder without it is an interrupted build.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import ControlNetModel
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPImageProcessor

from node.pipelines import MODULE_BUILD_LOCK
from node.spandrel_loader import import_spandrel
from node.tiny_model import TINY_TEXT_WIDTH, tiny_unet
from protocol.samplers import CONTROL_TYPES

EXTRAS_INDEX = "extras.json"
# Two checkers that differ only in their concept thresholds: cosine similarity lies in [-1, 1], so a
# threshold of -2 flags every image and +2 none, deterministically whatever the random weights.
SAFETY_FLAG_ALL = "safety-flag-all"
SAFETY_PASS_ALL = "safety-pass-all"
_THRESHOLDS = {SAFETY_FLAG_ALL: -2.0, SAFETY_PASS_ALL: 2.0}
_BUILD_SEED = 20240602
# Real-ESRGAN's architecture (RRDB blocks; x2 through a pixel unshuffle, as RealESRGAN_x2plus does) at
# toy width, under the AI Horde names they stand in for.
TINY_UPSCALERS = {"RealESRGAN_x2plus": 2, "RealESRGAN_x4plus": 4}
# GFPGAN at full size, the only size spandrel builds it at (87M weights, stored half-precision: 174 MB).
TINY_FACE_FIXER = "GFPGAN"
# A two-vector textual inversion for the tiny text encoder (width 32), in CivitAI's SD 1.x file layout.
TI_FOLDER = "embeddings"
# ControlNets shaped for the tiny UNet, one per AI Horde control type (canny and scribble first, so their
# weights stay those of earlier builds): the node annotates for two, the others take `image_is_control`.
CONTROLNET_FOLDER = "controlnets"
TINY_CONTROL_TYPES = ("canny", "scribble", *(name for name in CONTROL_TYPES if name not in ("canny", "scribble")))
TINY_TI = "tiny-ti"
_CLIP_IMAGE_SIZE = 32


def build_tiny_extras(path: Path) -> Path:
    """Build every tiny companion into `path`; returns `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    built: dict[str, str] = {}
    with MODULE_BUILD_LOCK, torch.random.fork_rng():
        torch.manual_seed(_BUILD_SEED)
        for name, threshold in _THRESHOLDS.items():
            build_tiny_safety_checker(path / name, threshold)
            built[name] = name
        for name, scale in TINY_UPSCALERS.items():
            built[name] = build_tiny_upscaler(path / f"{name}.safetensors", scale).name
        built[TINY_TI] = str(build_tiny_ti(path / TI_FOLDER / f"{TINY_TI}.safetensors").relative_to(path))
        for control_type in TINY_CONTROL_TYPES:
            folder = path / CONTROLNET_FOLDER / control_type
            build_tiny_controlnet(folder)
            built[f"controlnet {control_type}"] = str(folder.relative_to(path))
        built[TINY_FACE_FIXER] = build_tiny_gfpgan(path / f"{TINY_FACE_FIXER}.safetensors").name
    (path / EXTRAS_INDEX).write_text(json.dumps(built, indent=2) + "\n")
    return path


def build_tiny_upscaler(file: Path, scale: int) -> Path:
    """An ESRGAN-family upscaler's weights as one safetensors file, the format spandrel reads."""
    spandrel = import_spandrel()
    net = spandrel.architectures.ESRGAN.ESRGAN(
        in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=scale, shuffle_factor=2 if scale == 2 else None
    )
    save_file({key: tensor.contiguous() for key, tensor in net.state_dict().items()}, file)
    return file


def build_tiny_gfpgan(file: Path) -> Path:
    """GFPGANv1Clean's weights (GFPGANv1.4.pth's layout) at random, as spandrel's GFPGAN loader builds it.

    Built last of the seeded ones, so the files built before it keep the weights of earlier builds.
    """
    spandrel = import_spandrel()
    net = spandrel.architectures.GFPGAN.GFPGAN(
        out_size=512,
        num_style_feat=512,
        channel_multiplier=2,
        decoder_load_path=None,
        fix_decoder=False,
        num_mlp=8,
        input_is_latent=True,
        different_w=True,
        narrow=1,
        sft_half=True,
    )
    save_file({key: tensor.half().contiguous() for key, tensor in net.state_dict().items()}, file)
    return file


def build_tiny_ti(file: Path) -> Path:
    file.parent.mkdir(parents=True, exist_ok=True)
    save_file({"emb_params": torch.randn(2, TINY_TEXT_WIDTH)}, file)
    return file


def build_tiny_controlnet(folder: Path) -> None:
    """A diffusers ControlNet matching the tiny UNet, its conditioning embedding down 8x like SD's.

    A trained ControlNet starts from zero-initialised convolutions (after the map's embedding and on
    each output); left at zero, a random one would ignore its map, so they get random weights too.
    """
    unet = tiny_unet()
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 8, 8))
    with torch.no_grad():
        for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
            torch.nn.init.normal_(conv.weight, std=0.5)
        # Seven default-initialised convolutions in a row would fade the map to nothing: variance-keeping ones.
        for conv in controlnet.controlnet_cond_embedding.modules():
            if isinstance(conv, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
                torch.nn.init.zeros_(conv.bias)
        controlnet.controlnet_cond_embedding.conv_out.weight.mul_(4)  # and loud enough to steer clearly
    controlnet.save_pretrained(folder, safe_serialization=True)


def build_tiny_safety_checker(folder: Path, threshold: float) -> None:
    """A StableDiffusionSafetyChecker folder (config, safetensors weights, CLIP image processor)."""
    text = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    vision = {**text, "image_size": _CLIP_IMAGE_SIZE, "patch_size": 8, "num_hidden_layers": 2}
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    checker = StableDiffusionSafetyChecker(config)
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(threshold)
        checker.special_care_embeds_weights.fill_(threshold)
    checker.save_pretrained(folder, safe_serialization=True)
    size = {"shortest_edge": _CLIP_IMAGE_SIZE}
    crop = {"height": _CLIP_IMAGE_SIZE, "width": _CLIP_IMAGE_SIZE}
    CLIPImageProcessor(size=size, crop_size=crop).save_pretrained(folder)
