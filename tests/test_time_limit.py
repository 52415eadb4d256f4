"""The job time limit (protocol/kudos.py), directly: AI Horde's rule of 30 s plus 2 s per step per 512×512
of area, never under 150 s. Tests elsewhere use 64×64 images, which all sit on the floor."""

import pytest

from protocol.kudos import job_time_limit


@pytest.mark.parametrize(("width", "height", "steps", "seconds"), [
    (64, 64, 4, 150),  # the floor
    (512, 512, 60, 150),  # 30 + 120: still the floor
    (512, 512, 61, 152),  # just over it
    (1024, 1024, 50, 430),  # 30 + 2 * 50 * 4
    (1024, 768, 25, 180),  # 30 + 2 * 25 * 3
    (2048, 2048, 30, 990),  # 30 + 2 * 30 * 16
])  # fmt: skip
def test_the_time_limit_grows_with_steps_and_area(width: int, height: int, steps: int, seconds: int) -> None:
    assert job_time_limit(width=width, height=height, steps=steps) == seconds
