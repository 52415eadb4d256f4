"""client.config: where settings live and which source wins."""

import stat
from pathlib import Path

import pytest

from client.config import (
    DEFAULT_URL,
    normalize_url,
    read_config_file,
    resolve,
    write_config_file,
)
from client.errors import UserError


def env_for(folder: Path, **values: str) -> dict[str, str]:
    return {"HORDE_CONFIG_DIR": str(folder), **values}


def test_defaults_when_nothing_is_configured(tmp_path: Path) -> None:
    settings = resolve(env=env_for(tmp_path))
    assert settings.url == DEFAULT_URL
    assert settings.apikey is None
    assert settings.url_source == "default"
    assert settings.identity_file == tmp_path / "identity.key"


def test_flags_beat_environment_beat_file(tmp_path: Path) -> None:
    write_config_file(tmp_path / "config.toml", {"url": "http://file:1", "apikey": "from-file"})
    assert resolve(env=env_for(tmp_path)).url == "http://file:1"
    assert resolve(env=env_for(tmp_path)).apikey == "from-file"
    env = env_for(tmp_path, HORDE_URL="http://env:2", HORDE_API_KEY="from-env")
    assert (resolve(env=env).url, resolve(env=env).apikey) == ("http://env:2", "from-env")
    flagged = resolve(url_flag="http://flag:3", apikey_flag="from-flag", env=env)
    assert (flagged.url, flagged.apikey, flagged.url_source) == ("http://flag:3", "from-flag", "--url")


def test_empty_environment_values_count_as_unset(tmp_path: Path) -> None:
    write_config_file(tmp_path / "config.toml", {"url": "http://file:1"})
    assert resolve(env=env_for(tmp_path, HORDE_URL="", HORDE_API_KEY="")).url == "http://file:1"


def test_config_dir_falls_back_to_xdg(tmp_path: Path) -> None:
    settings = resolve(env={"XDG_CONFIG_HOME": str(tmp_path)})
    assert settings.config_dir == tmp_path / "horde"


def test_written_file_is_private_and_merges(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "config.toml"
    write_config_file(path, {"url": "http://a:1", "note": 'quote " and ünïcode \\ slash'})
    write_config_file(path, {"apikey": "k", "note": None})
    assert read_config_file(path) == {"url": "http://a:1", "apikey": "k"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    write_config_file(path, {"note": 'quote " and ünïcode \\ slash'})
    assert read_config_file(path)["note"] == 'quote " and ünïcode \\ slash'


def test_any_text_survives_the_file(tmp_path: Path) -> None:
    # Emoji (outside the BMP: JSON's ASCII escapes would write a surrogate pair, which TOML rejects),
    # DEL (JSON leaves it raw, TOML forbids it) and control characters, through the writer the node shares.
    text = 'horse 🐎, del \x7f, tab \t, bell \x07, quote " and back \\ slash'
    write_config_file(tmp_path / "config.toml", {"note": text, "apikey": "k"})
    assert read_config_file(tmp_path / "config.toml") == {"note": text, "apikey": "k"}


def test_broken_config_file_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("url = [unclosed\n")
    with pytest.raises(UserError, match="not valid TOML"):
        resolve(env=env_for(tmp_path))


def test_broken_identity_file_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "identity.key").write_text("not a key\n")
    with pytest.raises(UserError, match="not a valid key"):
        resolve(env=env_for(tmp_path)).load_identity()


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://h:7001/", "http://h:7001"),
        ("http://h:7001/api", "http://h:7001"),
        ("https://h/api/v2/", "https://h"),
        (" http://h ", "http://h"),
    ],
)
def test_url_normalization(given: str, expected: str) -> None:
    assert normalize_url(given) == expected


def test_url_without_scheme_is_rejected() -> None:
    with pytest.raises(UserError, match="http"):
        normalize_url("localhost:7001")
