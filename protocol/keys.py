"""Ed25519 identities: every party on the network (coordinator, node, requester) is one key pair.

Text forms (the only documented ones):
  public key  ``ed25519:<base64url, no padding, of the 32 raw bytes>``
  secret key  ``ed25519-secret:<base64url, no padding, of the 32-byte seed>``

Pure: the files that hold a secret key are transport/keyfiles.py's.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from nacl.exceptions import CryptoError
from nacl.signing import SigningKey, VerifyKey

PUBLIC_PREFIX = "ed25519:"
SECRET_PREFIX = "ed25519-secret:"
KEY_BYTES = 32
SIGNATURE_BYTES = 64

_B64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")


class KeyFormatError(ValueError):
    """A key's text form could not be parsed."""


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode base64url, with or without padding; rejects anything outside the alphabet."""
    # The stdlib decoder silently drops stray characters, so check the alphabet first.
    if not _B64URL.fullmatch(text):
        raise ValueError("not base64url text")
    stripped = text.rstrip("=")
    try:
        return base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))
    except binascii.Error as exc:
        raise ValueError(f"not base64url text: {exc}") from None


def _decode_key_text(text: str, prefix: str, what: str) -> bytes:
    if not isinstance(text, str) or not text.startswith(prefix):
        raise KeyFormatError(f"{what} must start with {prefix!r}")
    try:
        raw = b64url_decode(text[len(prefix) :])
    except ValueError:
        raise KeyFormatError(f"{what} is not valid base64url after {prefix!r}") from None
    if len(raw) != KEY_BYTES:
        raise KeyFormatError(f"{what} must encode {KEY_BYTES} bytes, got {len(raw)}")
    return raw


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key; equal and hashable by its raw bytes."""

    raw: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != KEY_BYTES:
            raise KeyFormatError(f"an Ed25519 public key is {KEY_BYTES} bytes")

    @classmethod
    def from_text(cls, text: str) -> PublicKey:
        return cls(_decode_key_text(text, PUBLIC_PREFIX, "public key"))

    def text(self) -> str:
        return PUBLIC_PREFIX + b64url_encode(self.raw)

    def verify(self, message: bytes, signature: bytes) -> bool:
        """True only for a valid signature; any malformed input is just a failed check."""
        if not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES:
            return False
        try:
            VerifyKey(self.raw).verify(message, signature)
        except (CryptoError, ValueError, TypeError):
            return False
        return True

    def __str__(self) -> str:
        return self.text()

    def __repr__(self) -> str:
        return f"PublicKey({self.text()!r})"


class Identity:
    """A private signing key. Its repr never shows the secret."""

    __slots__ = ("_key",)

    def __init__(self, signing_key: SigningKey) -> None:
        self._key = signing_key

    @classmethod
    def generate(cls) -> Identity:
        return cls(SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        if len(seed) != KEY_BYTES:
            raise KeyFormatError(f"an Ed25519 seed is {KEY_BYTES} bytes")
        return cls(SigningKey(seed))

    @classmethod
    def from_secret_text(cls, text: str) -> Identity:
        return cls.from_seed(_decode_key_text(text.strip(), SECRET_PREFIX, "secret key"))

    def secret_text(self) -> str:
        return SECRET_PREFIX + b64url_encode(bytes(self._key))

    @property
    def public_key(self) -> PublicKey:
        return PublicKey(bytes(self._key.verify_key))

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message).signature

    def __repr__(self) -> str:
        return f"Identity(public_key={self.public_key.text()!r})"
