"""The price of an image and the job time limit (protocol/kudos.py), directly: tests elsewhere use 64×64
images of 4 steps, which reach neither the area term of the price, nor its modifiers all, nor the time
limit above its 150 s floor."""

import pytest

from protocol.kudos import image_kudos, job_time_limit
from protocol.samplers import SECOND_ORDER_SAMPLERS


@pytest.mark.parametrize(
    ("width", "height", "steps", "seconds"),
    [
        (64, 64, 4, 150),  # the floor
        (512, 512, 60, 150),  # 30 + 120: still the floor
        (512, 512, 61, 152),  # just over it
        (1024, 1024, 50, 430),  # 30 + 2 * 50 * 4
        (1024, 768, 25, 180),  # 30 + 2 * 25 * 3
        (2048, 2048, 30, 990),  # 30 + 2 * 30 * 16
    ],
)
def test_the_time_limit_grows_with_steps_and_area(width: int, height: int, steps: int, seconds: int) -> None:
    assert job_time_limit(width=width, height=height, steps=steps) == seconds


@pytest.mark.parametrize(
    ("side", "steps", "kudos"), [(512, 30, 7.6), (512, 50, 11.0), (1024, 30, 20.6), (2048, 30, 114.5)]
)
def test_the_price_meets_ai_hordes_published_scale(side: int, steps: int, kudos: float) -> None:
    assert image_kudos(width=side, height=side, steps=steps) == pytest.approx(kudos, rel=0.01)


def test_each_modifier_changes_the_price_as_documented() -> None:
    plain = image_kudos(width=1024, height=1024, steps=30)
    assert image_kudos(width=1024, height=1024, steps=30, img2img=True) == pytest.approx(plain * 1.3, abs=0.01)
    assert image_kudos(width=1024, height=1024, steps=30, loras=2) == pytest.approx(plain + 6, abs=0.01)
    two_post = image_kudos(width=1024, height=1024, steps=30, post_processors=["GFPGAN", "RealESRGAN_x2plus"])
    assert two_post == pytest.approx(plain * 1.4, abs=0.01)
    assert image_kudos(width=1024, height=1024, steps=30, pinned=True) == pytest.approx(plain * 1.1, abs=0.01)
    second_order = sorted(SECOND_ORDER_SAMPLERS)[0]  # evaluates the model twice per step
    doubled = image_kudos(width=1024, height=1024, steps=30, sampler_name=second_order)
    assert doubled == image_kudos(width=1024, height=1024, steps=60)
