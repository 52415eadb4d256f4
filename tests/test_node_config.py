"""Node settings: precedence (flags > env > file > defaults), the TOML template, paths and sizes."""

import os
import stat
import tomllib
from pathlib import Path

import pytest
import torch

from node.cli import build_parser, flag_layer
from node.config import (
    ConfigError,
    NodeConfig,
    build_config,
    default_config_path,
    env_layer,
    load_config,
    parse_size,
    resolve_config_path,
)
from node.config_file import render_toml, write_config
from node.devices import torch_threads


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def run_flags(*argv: str) -> dict:
    return flag_layer(build_parser().parse_args(["run", *argv]))


def test_precedence_flags_over_env_over_file_over_defaults(tmp_path: Path) -> None:
    path = write(tmp_path / "config.toml", 'name = "from-file"\nthreads = 2\nqueue_size = 3\nnsfw = true\n')
    env = {"HORDE_NODE_THREADS": "4", "HORDE_NODE_QUEUE_SIZE": "5"}
    config = load_config(path, env=env, flags=run_flags("--queue-size", "6"))
    assert config.name == "from-file"  # file only
    assert config.threads == 4  # env beats file
    assert config.queue_size == 6  # flag beats env
    assert config.nsfw is True  # file beats default
    assert config.max_pixels == 512 * 512  # default


def test_boolean_flags_and_env_lists(tmp_path: Path) -> None:
    env = {"HORDE_NODE_MODELS": "a, b", "HORDE_NODE_ALLOW_LORA": "yes"}
    config = load_config(tmp_path / "missing.toml", env=env, flags=run_flags("--no-allow-img2img"))
    assert config.models == ["a", "b"]
    assert config.allow_lora is True
    assert config.allow_img2img is False


def test_catalog_merges_per_model_across_layers(tmp_path: Path) -> None:
    path = write(tmp_path / "config.toml", '[catalog.a]\nsource = "org/a"\n[catalog.b]\nsource = "org/b"\n')
    env = {"HORDE_NODE_CATALOG": '{"b": {"source": "org/b2", "baseline": "stable_diffusion_2"}}'}
    config = load_config(path, env=env, flags=run_flags("--catalog", "c=org/c@stable_diffusion_xl"))
    assert {name: entry.source for name, entry in config.catalog.items()} == {"a": "org/a", "b": "org/b2", "c": "org/c"}
    assert config.catalog["c"].baseline == "stable_diffusion_xl"


def test_invalid_values_name_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="threads"):
        load_config(tmp_path / "none.toml", env={"HORDE_NODE_THREADS": "many"})
    with pytest.raises(ConfigError, match="memory_budget"):
        load_config(tmp_path / "none.toml", flags={"memory_budget": "lots"})
    with pytest.raises(ConfigError, match=r"config\.toml"):
        load_config(write(tmp_path / "config.toml", "threads = = 2"))


def test_toml_round_trip_keeps_every_setting(tmp_path: Path) -> None:
    config = NodeConfig(
        name='odd "name" ✓',
        apikey="k" * 22,
        models=["tiny-sd", "SDXL 1.0"],
        catalog={"tiny-sd": {"source": "models/tiny"}, "SDXL 1.0": {"source": "org/x", "revision": "fp16"}},
        key_file="",
        memory_budget="6GiB",
        pop_wait=2.5,
    )
    text = render_toml(config)
    assert "# coordinator_public_key" in text  # unset optional settings stay documented
    again = build_config(tomllib.loads(text), tmp_path)
    assert again.model_dump() == config.model_dump()
    assert again.key_file is None  # "" means apikey-only mode


def test_template_comments_every_setting() -> None:
    text = render_toml(NodeConfig())
    for name, field in NodeConfig.model_fields.items():
        assert field.description and field.description in text, name


def test_relative_paths_are_relative_to_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "cfg" / "models" / "tiny").mkdir(parents=True)
    path = write(tmp_path / "cfg" / "config.toml", '[catalog.t]\nsource = "models/tiny"\n[catalog.h]\nsource = "org/h"')
    config = load_config(path, env={})
    assert config.spool_path == tmp_path / "cfg" / "spool"
    assert config.key_path == tmp_path / "cfg" / "node.key"
    table = config.catalog_table()
    assert table["t"]["source"] == str(tmp_path / "cfg" / "models" / "tiny")
    assert table["h"] == {"source": "org/h", "baseline": "stable_diffusion_1"}


def test_config_location(tmp_path: Path) -> None:
    assert default_config_path({"HORDE_NODE_CONFIG_DIR": str(tmp_path)}) == tmp_path / "config.toml"
    assert default_config_path({"XDG_CONFIG_HOME": str(tmp_path)}) == tmp_path / "horde-node" / "config.toml"
    assert resolve_config_path(tmp_path, {}) == tmp_path / "config.toml"  # a folder
    assert resolve_config_path(tmp_path / "my.toml", {}) == tmp_path / "my.toml"


def test_written_config_is_private(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "config.toml"
    write_config(NodeConfig(apikey="secret"), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert tomllib.loads(path.read_text())["apikey"] == "secret"


def test_env_layer_ignores_unrelated_variables() -> None:
    assert env_layer({"HORDE_NODE_CONFIG_DIR": "/x", "HOME": "/root", "HORDE_NODE_NAME": "n"}) == {"name": "n"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [("auto", None), ("1024", 1024), ("6GiB", 6 * 1024**3), ("512MB", 512 * 1000**2), ("1.5 gib", 1610612736)],
)
def test_sizes(text: str, expected: int | None) -> None:
    assert parse_size(text) == expected


def test_torch_threads_leave_a_core_to_the_node_on_the_cpu() -> None:
    cores = len(os.sched_getaffinity(0))
    assert torch_threads(torch.device("cpu")) == max(1, cores - 1)
    assert torch_threads(torch.device("cpu"), configured=3) == 3
    assert torch_threads(torch.device("cuda")) is None  # torch's own default
    assert torch_threads(torch.device("cuda"), configured=2) == 2
