"""Canonical JSON (RFC 8785, JCS): the exact bytes that every signature and hash in the protocol covers."""

from __future__ import annotations

from typing import Any

import rfc8785
from pydantic import BaseModel


def canonical_json(value: Any) -> bytes:
    """RFC 8785 bytes of a JSON value or a pydantic model (dumped in JSON mode first).

    Raises ``rfc8785.CanonicalizationError`` (a ValueError) for values JSON cannot carry
    exactly: NaN/inf, integers beyond ±(2**53 - 1), non-string keys, other types.
    """
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return rfc8785.dumps(value)
