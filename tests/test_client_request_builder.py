"""client.request_builder: flags → GenerationRequest, with errors that name the flag."""

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from client.errors import UserError
from client.request_builder import GenerateOptions, build_request, parse_lora, parse_size


def test_flags_map_onto_the_request() -> None:
    request = build_request(
        GenerateOptions(
            prompt="a fox",
            model="tiny-sd",
            n=3,
            size="256x192",
            steps=12,
            sampler="k_euler",
            cfg=5.5,
            seed="42",
            negative="blurry",
            loras=["detail:0.7", "style"],
            nsfw=True,
        )
    )
    assert request.prompt == "a fox ### blurry"
    assert request.models == ["tiny-sd"]
    assert request.nsfw is True
    params = request.params
    assert (params.n, params.width, params.height, params.steps) == (3, 256, 192, 12)
    assert (params.sampler_name, params.cfg_scale, params.seed) == ("k_euler", 5.5, "42")
    assert [(lora.name, lora.model) for lora in params.loras] == [("detail", 0.7), ("style", 1.0)]


def test_unset_flags_keep_protocol_defaults() -> None:
    request = build_request(GenerateOptions(prompt="x"))
    assert (request.params.width, request.params.steps, request.models) == (512, 30, [])


@pytest.mark.parametrize("text", ["512", "axb", "512x", "x512", "512*512"])
def test_bad_size_format(text: str) -> None:
    with pytest.raises(UserError, match="--size must look like"):
        parse_size(text)


def test_size_accepts_upper_case_and_spaces() -> None:
    assert parse_size(" 640 X 384 ") == (640, 384)


def test_size_not_multiple_of_64_names_the_flag() -> None:
    with pytest.raises(UserError, match=r"^--size: .*multiple of 64"):
        build_request(GenerateOptions(prompt="x", size="100x100"))


@pytest.mark.parametrize(
    ("options", "flag"),
    [
        (GenerateOptions(prompt="x", steps=0), "--steps"),
        (GenerateOptions(prompt="x", n=50), "-n"),
        (GenerateOptions(prompt="x", cfg=-1), "--cfg"),
        (GenerateOptions(prompt=""), "PROMPT"),
    ],
)
def test_validation_errors_name_the_flag(options: GenerateOptions, flag: str) -> None:
    with pytest.raises(UserError, match=f"^{flag}: "):
        build_request(options)


def test_lora_names_may_hold_colons() -> None:
    lora = parse_lora("hub:name")
    assert (lora.name, lora.model) == ("hub:name", 1.0)
    lora = parse_lora("hub:name:-0.5")
    assert (lora.name, lora.model) == ("hub:name", -0.5)


@pytest.mark.parametrize(("text", "message"), [(":0.5", "needs a name"), ("x:9", "between -5 and 5")])
def test_bad_lora(text: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse_lora(text)


def test_source_image_and_mask_are_sent_as_webp(tmp_path: Path) -> None:
    source = tmp_path / "in.png"
    Image.new("RGB", (64, 64), "red").save(source)
    request = build_request(GenerateOptions(prompt="x", source_image=source, strength=0.4, mask=source))
    assert request.source_processing == "inpainting"
    assert request.params.denoising_strength == 0.4
    decoded = Image.open(io.BytesIO(base64.b64decode(request.source_image or "")))
    assert decoded.format == "WEBP" and decoded.size == (64, 64)


def test_unreadable_source_image_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--source-image: no such file"):
        build_request(GenerateOptions(prompt="x", source_image=tmp_path / "missing.png"))
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    with pytest.raises(UserError, match="not an image"):
        build_request(GenerateOptions(prompt="x", source_image=junk))


def test_strength_needs_a_source_image() -> None:
    with pytest.raises(UserError, match="--strength only applies"):
        build_request(GenerateOptions(prompt="x", strength=0.5))
