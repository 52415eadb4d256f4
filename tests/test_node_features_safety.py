"""The node's content policy: censor_nsfw and the operator's nsfw/blacklist settings, with the tiny
safety checkers (one flags every image, one none: their thresholds are outside cosine's range)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from PIL import Image

from node.catalog import Catalog
from node.config import build_config
from node.daemon import NodeDaemon
from node.features import CENSOR_NSFW, Features, declared
from node.inference import Generator
from node.jobspec import JobRejected, JobSpec
from node.pipelines import PipelineCache
from node.safety import ContentPolicy, SafetyChecker, placeholder
from node.tiny_extras import SAFETY_FLAG_ALL, SAFETY_PASS_ALL
from tests.conftest import RunningCoordinator
from tests.fixtures_models import tiny_spec
from tests.helpers import Api
from tests.node_features_support import CPU, requester_and_node, tiny_job
from tests.node_support import finished, running

pytestmark = pytest.mark.usefixtures("one_torch_thread")


job = tiny_job


@pytest.fixture(scope="module")
def cache(tiny_model_dir: Path) -> PipelineCache:
    return PipelineCache(Catalog({"tiny-sd": tiny_spec(tiny_model_dir)}), CPU)


def generator(cache: PipelineCache, extras: Path | None, checker: str, **policy: object) -> Generator:
    safety = SafetyChecker(str(extras / checker), CPU) if extras else None
    return Generator(cache, CPU, features=Features(ContentPolicy(**policy), safety))  # type: ignore[arg-type]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


async def fetch_image(img: str) -> Image.Image:
    """A generation's image, whether inline base64 or a URL."""
    if not img.startswith("http"):
        return Image.open(io.BytesIO(base64.b64decode(img)))
    async with aiohttp.ClientSession() as session, session.get(img) as response:
        assert response.status == 200
        return Image.open(io.BytesIO(await response.read()))


async def request(api: Api, **extra: object) -> dict[str, object]:
    body = {
        "prompt": "a red cat",
        "models": ["tiny-sd"],
        "nsfw": True,
        **extra,
        "params": {"width": 64, "height": 64, "steps": 2, "sampler_name": "k_euler"},
    }
    reply = await api.post("/v2/generate/async", body)
    assert reply.status == 202, reply.body
    [generation] = (await finished(api, reply.body["id"]))["generations"]
    return generation


async def test_censor_nsfw_returns_the_placeholder_marked_censored_end_to_end(
    coordinator: RunningCoordinator, tiny_model_dir: Path, tiny_extras_dir: Path, tmp_path: Path
) -> None:
    # nsfw on: only the requests that ask for censor_nsfw are checked. Lossless, so pixels compare exactly.
    api, config = await requester_and_node(
        coordinator, tmp_path, tiny_model_dir, nsfw=True, safety_checker=str(tiny_extras_dir / SAFETY_FLAG_ALL)
    )
    async with running(NodeDaemon(config)):
        censored = await request(api, censor_nsfw=True)
        plain = await request(api, censor_nsfw=False)

    assert censored["state"] == "censored" and censored["censored"] is True
    assert [(e["type"], e["value"]) for e in censored["gen_metadata"]] == [("censorship", "nsfw")]
    image = await fetch_image(censored["img"])
    assert image.size == (64, 64)
    assert np.array_equal(pixels(image), pixels(placeholder((64, 64))))

    assert plain["state"] == "ok" and plain["censored"] is False and plain["gen_metadata"] == []
    image = await fetch_image(plain["img"])
    assert not np.array_equal(pixels(image), pixels(placeholder((64, 64))))


def test_an_operator_without_nsfw_has_every_image_checked(cache: PipelineCache, tiny_extras_dir: Path) -> None:
    plain = Generator(cache, CPU).run(job())[0]
    [flagged] = generator(cache, tiny_extras_dir, SAFETY_FLAG_ALL, nsfw=False).run(job())
    [passed] = generator(cache, tiny_extras_dir, SAFETY_PASS_ALL, nsfw=False).run(job())
    [allowed] = generator(cache, tiny_extras_dir, SAFETY_FLAG_ALL, nsfw=True).run(job())

    assert flagged.censored and flagged.metadata == [{"type": "censorship", "value": "nsfw"}]
    assert flagged.image is not None and np.array_equal(pixels(flagged.image), pixels(placeholder((64, 64))))
    for kept in (passed, allowed):
        assert not kept.censored and kept.metadata == []
        assert kept.image is not None and plain.image is not None
        assert np.array_equal(pixels(kept.image), pixels(plain.image))


def test_censor_nsfw_without_a_checker_is_refused_before_running(cache: PipelineCache) -> None:
    with pytest.raises(JobRejected, match="safety checker"):
        generator(cache, None, "", nsfw=True).run(job(censor_nsfw=True))


def test_the_operators_blacklist_refuses_the_prompt(cache: PipelineCache, tiny_extras_dir: Path) -> None:
    node = generator(cache, tiny_extras_dir, SAFETY_PASS_ALL, nsfw=True, blacklist=("Dragon",))
    with pytest.raises(JobRejected, match="Dragon"):
        node.run(job(prompt="a DRAGON over the sea"))
    with pytest.raises(JobRejected, match="Dragon"):
        node.run(job(negative_prompt="dragons"))
    assert node.run(job(prompt="a cat"))[0].image is not None


def test_a_node_declares_censoring_only_with_a_checker(tmp_path: Path, tiny_extras_dir: Path) -> None:
    bare = build_config({"blacklist": ["dragon"]}, tmp_path)
    checked = build_config({"safety_checker": str(tiny_extras_dir / SAFETY_PASS_ALL)}, tmp_path)
    assert CENSOR_NSFW not in declared(bare)["features"] and declared(bare)["blacklist"] == ["dragon"]
    assert CENSOR_NSFW in declared(checked)["features"]
    # The payload flag AI Horde sends for censor_nsfw reaches the job.
    assert JobSpec.from_payload("m", {"prompt": "p", "use_nsfw_censor": True}).censor_nsfw is True
