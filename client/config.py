"""Where the CLI keeps its settings and identity, and how flags, environment and file combine.

Precedence, highest first: command-line flags, environment (`HORDE_URL`, `HORDE_API_KEY`),
`config.toml` in the config folder, built-in defaults.

The identity key signs only for the account it was registered to: `horde register` records that
pair in config.toml (`identity_binding`), and an apikey of any other account goes out alone.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from client.errors import UserError
from protocol.keys import Identity, KeyFormatError, PublicKey
from transport import keyfiles
from transport.tomlfile import toml_value, write_toml

DEFAULT_URL = "http://127.0.0.1:7001"
ANONYMOUS_APIKEY = "0000000000"
CONFIG_FILE = "config.toml"
IDENTITY_FILE = "identity.key"
ENV_CONFIG_DIR = "HORDE_CONFIG_DIR"
ENV_URL = "HORDE_URL"
ENV_APIKEY = "HORDE_API_KEY"
BINDING = "identity_binding"

Scalar = str | int | float | bool


def config_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get(ENV_CONFIG_DIR):
        return Path(env[ENV_CONFIG_DIR]).expanduser()
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "horde"


def read_config_file(path: Path) -> dict[str, Scalar]:
    """The file's top-level scalars; a missing file is an empty config."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read config file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"config file {path} is not valid TOML: {exc}") from None
    return {key: value for key, value in data.items() if isinstance(value, Scalar)}


def write_config_file(path: Path, updates: Mapping[str, Scalar | None]) -> None:
    """Merge updates into the file (None deletes a key); written 0600 because it holds the apikey."""
    data: dict[str, Scalar] = read_config_file(path)
    for key, value in updates.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    write_toml(path, "".join(f"{key} = {toml_value(value)}\n" for key, value in sorted(data.items())))


@dataclass(frozen=True)
class Settings:
    """Everything a command needs to talk to the coordinator as the user."""

    config_dir: Path
    url: str
    apikey: str | None
    url_source: str
    binding: str | None = None  # config.toml's identity_binding: which apikey the identity belongs to

    @property
    def config_file(self) -> Path:
        return self.config_dir / CONFIG_FILE

    @property
    def identity_file(self) -> Path:
        return self.config_dir / IDENTITY_FILE

    def load_identity(self) -> Identity | None:
        """The user's key if one exists; None means requests go out with just the apikey."""
        if not self.identity_file.exists():
            return None
        return load_identity(self.identity_file)

    def signs_for(self, identity: Identity) -> bool:
        """Whether `identity` may sign requests that carry this apikey. Only for the account it was
        registered to, so an apikey of another account (a flag, the environment, a hand-edited file)
        never makes the CLI act as the key's account; with no apikey at all the key speaks alone."""
        return self.apikey is None or self.binding == identity_binding(identity.public_key, self.apikey)


def identity_binding(public_key: PublicKey, apikey: str) -> str:
    """What `horde register` records: the key with this public key belongs to this apikey's account.
    A hash of the pair, so the file holds no second copy of the apikey and a replaced key no longer matches."""
    return "sha256:" + hashlib.sha256(f"{public_key.text()}\n{apikey}".encode()).hexdigest()


def load_identity(path: Path) -> Identity:
    try:
        return keyfiles.load_identity(path)
    except OSError as exc:
        raise UserError(f"cannot read identity file {path}: {exc.strerror or exc}") from None
    except (KeyFormatError, UnicodeDecodeError) as exc:
        raise UserError(f"identity file {path} is not a valid key: {exc}") from None


def resolve(
    *,
    url_flag: str | None = None,
    apikey_flag: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    env = os.environ if env is None else env
    folder = config_dir(env)
    stored = read_config_file(folder / CONFIG_FILE)
    url, source = _first(
        ("--url", url_flag),
        (ENV_URL, env.get(ENV_URL)),
        (CONFIG_FILE, stored.get("url")),
        ("default", DEFAULT_URL),
    )
    apikey, _ = _first(
        ("--apikey", apikey_flag), (ENV_APIKEY, env.get(ENV_APIKEY)), (CONFIG_FILE, stored.get("apikey"))
    )
    return Settings(
        config_dir=folder,
        url=normalize_url(str(url)),
        apikey=_str_or_none(apikey),
        url_source=source,
        binding=_str_or_none(stored.get(BINDING)),
    )


def _first(*candidates: tuple[str, Scalar | None]) -> tuple[Scalar | None, str]:
    # An empty value (HORDE_URL= in the environment) counts as unset rather than as "".
    for source, value in candidates:
        if value is not None and value != "":
            return value, source
    return None, "none"


def _str_or_none(value: Scalar | None) -> str | None:
    return None if value is None else str(value)


def normalize_url(url: str) -> str:
    """The coordinator's root URL, without a trailing slash or `/api` suffix, which users add by habit."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise UserError(f"coordinator URL must start with http:// or https://: {url!r}")
    for suffix in ("/api/v2", "/api"):
        if url.endswith(suffix):
            url = url[: -len(suffix)]
    return url
