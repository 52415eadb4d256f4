import os
import stat
from pathlib import Path

import pytest

from coordinator.tokens import new_apikey
from protocol.keys import (
    Identity,
    KeyFormatError,
    PublicKey,
    b64url_decode,
    b64url_encode,
)
from transport.keyfiles import load_identity, load_or_create_identity, save_identity

# RFC 8032 §7.1, TEST 1 (empty message).
RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC8032_SIGNATURE = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065"
    "224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_b64url_round_trip_without_padding() -> None:
    for size in range(0, 40):
        data = os.urandom(size)
        text = b64url_encode(data)
        assert "=" not in text and "+" not in text and "/" not in text
        assert b64url_decode(text) == data
        assert b64url_decode(text + "=" * (-len(text) % 4)) == data


@pytest.mark.parametrize("text", ["ab+c", "ab/c", "a b", "a", "abc!", "ab=c"])
def test_b64url_decode_rejects_bad_text(text: str) -> None:
    with pytest.raises(ValueError):
        b64url_decode(text)


def test_known_rfc8032_vector() -> None:
    identity = Identity.from_seed(RFC8032_SEED)
    assert identity.public_key.raw == RFC8032_PUBLIC
    assert identity.sign(b"") == RFC8032_SIGNATURE
    assert identity.public_key.verify(b"", RFC8032_SIGNATURE)


def test_text_forms_round_trip() -> None:
    identity = Identity.generate()
    secret = identity.secret_text()
    assert secret.startswith("ed25519-secret:") and len(secret) == len("ed25519-secret:") + 43
    again = Identity.from_secret_text(secret)
    assert again.public_key == identity.public_key
    text = identity.public_key.text()
    assert text.startswith("ed25519:") and len(text) == len("ed25519:") + 43
    assert PublicKey.from_text(text) == identity.public_key
    assert str(identity.public_key) == text


def test_public_key_text_of_known_key() -> None:
    key = PublicKey(RFC8032_PUBLIC)
    assert key.text() == "ed25519:11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("ed448:11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "start with"),
        ("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "start with"),
        ("ed25519:11qYAYKx*rfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "base64url"),
        ("ed25519:11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcH", "32 bytes"),
        ("ed25519:", "32 bytes"),
    ],
)
def test_public_key_from_text_rejects_bad_input(text: str, fragment: str) -> None:
    with pytest.raises(KeyFormatError, match=fragment):
        PublicKey.from_text(text)
    assert issubclass(KeyFormatError, ValueError)


def test_secret_text_rejects_public_text() -> None:
    with pytest.raises(KeyFormatError):
        Identity.from_secret_text(Identity.generate().public_key.text())


def test_verify_returns_false_instead_of_raising() -> None:
    identity = Identity.generate()
    signature = identity.sign(b"hello")
    key = identity.public_key
    assert key.verify(b"hello", signature)
    assert not key.verify(b"hellO", signature)
    assert not key.verify(b"hello", signature[:-1] + bytes([signature[-1] ^ 1]))
    assert not key.verify(b"hello", signature[:10])
    assert not key.verify(b"hello", b"")
    assert not Identity.generate().public_key.verify(b"hello", signature)


def test_public_key_equality_and_hash_by_raw_bytes() -> None:
    raw = Identity.generate().public_key.raw
    assert PublicKey(raw) == PublicKey(bytes(raw))
    assert len({PublicKey(raw), PublicKey(bytes(raw))}) == 1
    assert PublicKey(raw) != Identity.generate().public_key
    with pytest.raises(KeyFormatError):
        PublicKey(raw[:31])


def test_repr_does_not_leak_the_secret() -> None:
    identity = Identity.generate()
    assert identity.secret_text() not in repr(identity)
    assert identity.public_key.text() in repr(identity)


def test_save_writes_0600_file_in_0700_dir(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "nested" / "node.key"
    identity = Identity.generate()
    old_umask = os.umask(0)  # the most permissive umask must not widen the file
    try:
        save_identity(identity, path)
    finally:
        os.umask(old_umask)
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    assert path.read_text() == identity.secret_text() + "\n"
    assert load_identity(path).public_key == identity.public_key
    assert os.listdir(path.parent) == ["node.key"]  # no temporary file left behind


def test_save_replaces_a_world_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    path.write_text("old contents\n")
    path.chmod(0o644)
    identity = Identity.generate()
    save_identity(identity, path)
    assert mode(path) == 0o600
    assert load_identity(path).public_key == identity.public_key


def test_load_or_create_creates_once_then_loads(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.key"
    first = load_or_create_identity(path)
    assert mode(path) == 0o600
    second = load_or_create_identity(path)
    assert second.public_key == first.public_key
    assert sorted(os.listdir(tmp_path)) == ["coordinator.key"]


def test_load_or_create_keeps_an_existing_key(tmp_path: Path) -> None:
    path = tmp_path / "worker.key"
    existing = Identity.generate()
    save_identity(existing, path)
    assert load_or_create_identity(path).public_key == existing.public_key


def test_load_rejects_a_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.key"
    path.write_text("ed25519-secret:not-a-key\n")
    with pytest.raises(KeyFormatError):
        load_identity(path)


def test_new_apikeys_are_safe_to_pass_on_a_command_line() -> None:
    """A key that starts with '-' reads as an option (`horde --apikey -x...` fails), so keys hold
    letters and digits only; 2,000 keys from token_urlsafe would start with '-' about 31 times."""
    keys = {new_apikey() for _ in range(2000)}
    assert len(keys) == 2000
    assert all(len(key) == 22 and key.isascii() and key.isalnum() for key in keys)
