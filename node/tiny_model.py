"""A tiny random-weight Stable Diffusion 1.x pipeline for tests, demos and CI.

It has the real SD1 architecture (CLIP text encoder, conditional UNet, KL VAE with an 8x spatial
factor) at toy width, so every code path of the node runs offline in milliseconds on a CPU. The
images are noise-like but deterministic: the build seeds torch, so two builds give identical weights.
"""

from __future__ import annotations

import json
from collections import Counter
from itertools import pairwise
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    EulerAncestralDiscreteScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from tokenizers import pre_tokenizers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from node.catalog import MODEL_INFO_FILE, Baseline
from node.pipelines import MODULE_BUILD_LOCK

TINY_MODEL_NAME = "tiny-sd"
TINY_MODEL_BASELINE: Baseline = "stable_diffusion_1"

TINY_TEXT_WIDTH = 32  # the text encoder's hidden size (an embedding for it has vectors this long)
_BUILD_SEED = 20240601
_MAX_TOKENS = 77
_WORD_END = "</w>"
_BOS = "<|startoftext|>"
_EOS = "<|endoftext|>"
_MERGE_COUNT = 400

# A small prompt-like corpus to learn BPE merges from, so ordinary English prompts split into
# word-sized tokens instead of single characters.
_CORPUS = """
a photo of a cat sitting on a red chair in a sunny garden, highly detailed, digital painting
portrait of an old man with a beard, oil on canvas, dramatic lighting, trending on artstation
a beautiful landscape with mountains, a lake and a forest at sunset, cinematic, concept art
a futuristic city at night with neon lights and flying cars, cyberpunk, rain, reflections
a cute dog playing with a ball on the beach, golden hour, bokeh, sharp focus, photograph
an astronaut riding a horse on the moon, science fiction, illustration, vibrant colors
a castle on a hill surrounded by clouds, fantasy, matte painting, epic composition, masterpiece
a bowl of fruit on a wooden table, still life, soft light, studio photography, realistic
a dragon flying over the ocean, storm, lightning, waves, dark sky, best quality, high resolution
blurry, ugly, deformed, bad anatomy, low quality, watermark, text, signature, extra fingers
a woman wearing a blue dress walking through a field of flowers, spring, painting by a master
the quick brown fox jumps over the lazy dog, simple sketch, black and white, pencil drawing
"""


def build_tiny_model(path: Path) -> Path:
    """Build the tiny pipeline into `path` (safetensors) with its horde-model.json; returns `path`."""
    path = Path(path)
    with MODULE_BUILD_LOCK, torch.random.fork_rng():
        torch.manual_seed(_BUILD_SEED)
        tokenizer = _tokenizer()
        pipe = StableDiffusionPipeline(
            vae=_vae(),
            text_encoder=_text_encoder(tokenizer),
            tokenizer=tokenizer,
            unet=tiny_unet(),
            scheduler=_scheduler(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.save_pretrained(path, safe_serialization=True)
    info = {"name": TINY_MODEL_NAME, "baseline": TINY_MODEL_BASELINE}
    (path / MODEL_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return path


def _scheduler() -> EulerAncestralDiscreteScheduler:
    # SD 1.x's published noise schedule, so sampler overrides inherit realistic settings.
    return EulerAncestralDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )


def tiny_unet() -> UNet2DConditionModel:
    # One cross-attention block plus the mid block: conditioning still reaches every resolution, and
    # on a CPU this costs little more than the per-op overhead.
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",),
        block_out_channels=(32,),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def _vae() -> AutoencoderKL:
    # Four blocks give SD's 8x latent downscale, so width/height rules match the real models.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        mid_block_add_attention=False,
    )


def _text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TINY_TEXT_WIDTH,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=_MAX_TOKENS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def _tokenizer() -> CLIPTokenizer:
    # The byte-level alphabet keeps every input encodable; the learned merges make common words single tokens.
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges = _learn_merges(_corpus_words(), _MERGE_COUNT)
    symbols = alphabet + [c + _WORD_END for c in alphabet] + [a + b for a, b in merges]
    vocab = {symbol: i for i, symbol in enumerate(dict.fromkeys(symbols))}
    vocab[_BOS] = len(vocab)
    vocab[_EOS] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=_MAX_TOKENS)


def _corpus_words() -> Counter[tuple[str, ...]]:
    words = Counter("".join(c for c in word if c.isalpha()) for word in _CORPUS.lower().split())
    words.pop("", None)
    return Counter({(*word[:-1], word[-1] + _WORD_END): n for word, n in words.items()})


def _learn_merges(words: Counter[tuple[str, ...]], count: int) -> list[tuple[str, str]]:
    merges: list[tuple[str, str]] = []
    for _ in range(count):
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, n in words.items():
            for pair in pairwise(symbols):
                pairs[pair] += n
        if not pairs:
            break
        # Ties break on the pair itself so the vocabulary never depends on dict ordering.
        best = max(pairs, key=lambda pair: (pairs[pair], pair))
        merges.append(best)
        words = Counter({_merge(symbols, best): n for symbols, n in words.items()})
    return merges


def _merge(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out: list[str] = []
    i = 0
    while i < len(symbols):
        if symbols[i : i + 2] == pair:
            out.append(pair[0] + pair[1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)
