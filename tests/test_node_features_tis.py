"""Textual inversions: a tiny two-vector embedding for the tiny text encoder, loaded for one job with
diffusers' load_textual_inversion and removed after it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from node.catalog import Catalog
from node.config import build_config
from node.daemon import NodeDaemon
from node.embeddings import inject, token
from node.features import TIS, Features, declared
from node.inference import Generator
from node.jobspec import JobRejected, JobSpec, TiSpec
from node.pipelines import PipelineCache
from node.tiny_extras import TI_FOLDER, TINY_TI
from tests.conftest import RunningCoordinator
from tests.fixtures_models import tiny_spec
from tests.node_features_support import CPU, fetch_pixels, requester_and_node, tiny_job
from tests.node_support import finished, running

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def job(**overrides: object) -> JobSpec:
    return tiny_job(**{"steps": 3, **overrides})


@pytest.fixture(scope="module")
def node(tiny_model_dir: Path, tiny_extras_dir: Path) -> Generator:
    cache = PipelineCache(Catalog({"tiny-sd": tiny_spec(tiny_model_dir)}), CPU)
    return Generator(cache, CPU, features=Features(ti_dir=tiny_extras_dir / TI_FOLDER))


def pixels(node: Generator, spec: JobSpec) -> np.ndarray:
    [generated] = node.run(spec)
    assert generated.image is not None
    return np.asarray(generated.image, dtype=np.float64)


def differ(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.abs(a - b).mean() > 1)


def test_a_ti_token_changes_the_image_and_is_removed_afterwards(node: Generator) -> None:
    tokenizer = node.cache.get(node.cache.catalog.resolve("tiny-sd")).tokenizer
    vocabulary = tokenizer.get_vocab()
    plain = pixels(node, job())
    in_prompt = pixels(node, job(tis=[TiSpec(TINY_TI, "prompt")]))
    weaker = pixels(node, job(tis=[TiSpec(TINY_TI, "prompt", strength=0.3)]))
    in_negative = pixels(node, job(tis=[TiSpec(TINY_TI, "negprompt")]))
    written = pixels(node, job(prompt=f"embedding:{TINY_TI} a red cat", tis=[TiSpec(TINY_TI)]))
    skipped = pixels(node, job(clip_skip=2, tis=[TiSpec(TINY_TI, "prompt")]))

    assert differ(in_prompt, plain) and differ(weaker, in_prompt) and differ(in_negative, plain)
    assert differ(written, plain) and differ(skipped, pixels(node, job(clip_skip=2)))
    # The text encoder is shared by every job on the model: the next job must not see the embedding.
    assert np.array_equal(pixels(node, job()), plain)
    assert tokenizer.get_vocab() == vocabulary


def test_the_token_goes_where_inject_ti_says() -> None:
    tis = [TiSpec("a", "prompt"), TiSpec("b", "negprompt"), TiSpec("c")]
    assert inject("x embedding:c", None, tis) == (f"{token('a')}, x {token('c')}", token("b"))
    assert inject("x", "y", [TiSpec("b", "negprompt")]) == ("x", f"{token('b')}, y")


def test_a_ti_the_node_lacks_is_refused_before_running(node: Generator, tiny_model_dir: Path) -> None:
    for name in ("missing", "../embeddings/tiny-ti", "tiny-ti/../tiny-ti"):
        with pytest.raises(JobRejected, match="not available"):
            node.run(job(tis=[TiSpec(name, "prompt")]))
    without = Generator(node.cache, CPU)
    with pytest.raises(JobRejected, match="textual inversions"):
        without.run(job(tis=[TiSpec(TINY_TI, "prompt")]))


def test_tis_are_declared_only_with_allow_lora_and_a_folder(tmp_path: Path, tiny_extras_dir: Path) -> None:
    folder = str(tiny_extras_dir / TI_FOLDER)
    assert TIS in declared(build_config({"allow_lora": True, "ti_dir": folder}, tmp_path))["features"]
    assert TIS not in declared(build_config({"allow_lora": False, "ti_dir": folder}, tmp_path))["features"]
    absent = build_config({"allow_lora": True, "ti_dir": str(tmp_path / "none")}, tmp_path)
    assert TIS not in declared(absent)["features"]
    payload = {"prompt": "p", "tis": [{"name": "7", "inject_ti": "negprompt", "strength": 0.5}]}
    assert JobSpec.from_payload("m", payload).tis == [TiSpec("7", "negprompt", 0.5)]


async def test_tis_reach_the_node_end_to_end(
    coordinator: RunningCoordinator, tiny_model_dir: Path, tiny_extras_dir: Path, tmp_path: Path
) -> None:
    api, config = await requester_and_node(
        coordinator, tmp_path, tiny_model_dir, allow_lora=True, ti_dir=str(tiny_extras_dir / TI_FOLDER)
    )
    images = []
    async with running(NodeDaemon(config)):
        for tis in ([], [{"name": TINY_TI, "inject_ti": "prompt"}]):
            params = {"width": 64, "height": 64, "steps": 3, "seed": "7", "sampler_name": "k_euler", "tis": tis}
            body = {"prompt": "a red cat", "models": ["tiny-sd"], "params": params}
            reply = await api.post("/v2/generate/async", body)
            assert reply.status == 202, reply.body
            [generation] = (await finished(api, reply.body["id"]))["generations"]
            assert generation["state"] == "ok", generation
            images.append(await fetch_pixels(generation["img"]))
    assert differ(images[0], images[1])
