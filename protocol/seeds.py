"""The one reading of a seed: the coordinator turns a request's seed into each image's, the node
reads the seed a job carries, and the two must agree or an image is not reproducible."""

import hashlib
import re
import secrets

SEED_SPACE = 2**32
# ASCII digits only: str.isdigit() and re's \d accept "²" or "٣", which are not what a person typed as a number.
_NUMBER = re.compile(r"[+-]?[0-9]+")


def seed_text(value: object) -> object:
    """A seed is text on the wire, but AI Horde's clients may send it as a JSON integer: its digits.
    (A pydantic `before` validator for every model that carries a seed.)"""
    return str(value) if isinstance(value, int) else value


def seed_number(seed: object) -> int:
    """A seed in [0, 2**32): an integer (sign allowed: "-17" is 2**32 - 17) as itself modulo 2**32,
    any other text hashed stably, nothing (None, blank) a random seed."""
    text = str(seed).strip() if seed is not None else ""
    if not text:
        return secrets.randbelow(SEED_SPACE)
    if _NUMBER.fullmatch(text):
        return int(text) % SEED_SPACE
    # sha256, not hash(): Python salts str hashes per process, and the seed must be reproducible.
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")
