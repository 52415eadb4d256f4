"""HTTP Message Signatures (RFC 9421) with Ed25519, independent of any HTTP library.

Every signed request covers ``("@method" "@target-uri" "content-digest")`` with the parameters
``created``, ``keyid`` (our ``ed25519:...`` public key text), ``nonce`` and ``alg="ed25519"``,
under the label ``sig1``. Replay (nonce reuse) and key registration are the caller's checks.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

from protocol.keys import Identity, KeyFormatError, PublicKey, b64url_encode

LABEL = "sig1"
ALG = "ed25519"
COMPONENTS = ("@method", "@target-uri", "content-digest")
MAX_NONCE_CHARS = 128

Params = Mapping[str, int | str]


class SignatureError(Exception):
    rc: str = "SignatureError"
    message: str = "The request signature could not be verified."

    def __init__(self, detail: str | None = None) -> None:
        # The instance message adds the detail; the class attribute stays the generic text.
        self.message = f"{type(self).message} {detail}" if detail else type(self).message
        super().__init__(self.message)


class SignatureMissing(SignatureError):
    rc, message = "SignatureMissing", "This request must be signed (Signature-Input and Signature headers)."


class SignatureMalformed(SignatureError):
    rc, message = "SignatureMalformed", "The request signature headers are malformed."


class DigestMismatch(SignatureError):
    rc, message = "DigestMismatch", "The Content-Digest header does not match the request body."


class SignatureExpired(SignatureError):
    rc, message = "SignatureExpired", "The signature's created time is too far from the server clock."


class SignatureInvalid(SignatureError):
    rc, message = "InvalidSignature", "The request signature does not verify."


class UnknownKey(SignatureError):
    rc, message = "UnknownSignatureKey", "The signing key is not known to this coordinator."


class SignatureReplay(SignatureError):
    rc, message = "SignatureReplay", "This signature nonce has already been used."


@dataclass(frozen=True)
class SignedRequest:
    key: PublicKey
    created: int
    nonce: str


# RFC 8941 structured fields, only the shapes used here: a dictionary with exactly one member,
# either an inner list of strings or a byte sequence, with integer or string parameters. All
# else (tokens, booleans, decimals, item parameters, more members) is rejected as malformed.
_KEY = r"[a-z*][a-z0-9_.*-]*"
_STRING = r'"(?:[ !#-\[\]-~]|\\["\\])*"'
_PARAM = rf";({_KEY})=(-?[0-9]{{1,15}}|{_STRING})"
_INNER_LIST_MEMBER = re.compile(rf"({_KEY})=\( *((?:{_STRING}(?: +{_STRING})*)?) *\)((?:{_PARAM})*)")
_BYTES_MEMBER = re.compile(rf"({_KEY})=:([A-Za-z0-9+/]*={{0,2}}):((?:{_PARAM})*)")


def _sf_value(value: int | str) -> str:
    if isinstance(value, str) and all(" " <= char <= "~" for char in value):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10**15:
        return str(value)
    raise ValueError(f"not a structured-field string (printable ASCII) or integer: {value!r}")


def _inner_list(items: list[str], params: Params) -> str:
    listed = " ".join(_sf_value(item) for item in items)
    return f"({listed})" + "".join(f";{key}={_sf_value(value)}" for key, value in params.items())


def _unquote(quoted: str) -> str:
    return re.sub(r"\\(.)", r"\1", quoted[1:-1])


def _member(pattern: re.Pattern[str], text: str, header: str) -> re.Match[str]:
    found = pattern.fullmatch(text)
    if not found:
        raise SignatureMalformed(f"{header} is not a structured-field dictionary of the expected shape.")
    return found


def _params(text: str) -> dict[str, int | str]:
    out: dict[str, int | str] = {}
    for key, value in re.findall(_PARAM, text):
        if key in out:
            raise SignatureMalformed(f"Duplicate signature parameter {key!r}.")
        out[key] = _unquote(value) if value.startswith('"') else int(value)
    return out


def _bytes(encoded: str) -> bytes:
    bare = encoded.rstrip("=")
    try:
        # RFC 8941 §4.2.7: parsers should not fail on missing "=" padding.
        return base64.b64decode(bare + "=" * (-len(bare) % 4), validate=True)
    except binascii.Error:
        raise SignatureMalformed("Bad base64 in a byte sequence.") from None


def content_digest(body: bytes) -> str:
    """RFC 9530 Content-Digest value: an RFC 8941 dictionary with one byte-sequence member."""
    return "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode("ascii") + ":"


def _base(lines: list[tuple[str, str]], params: Params) -> bytes:
    """RFC 9421 §2.5: one ``"name": value`` line per component, then the params line, no final LF."""
    out = [f'"{name}": {value}' for name, value in lines]
    out.append(f'"@signature-params": {_inner_list([name for name, _ in lines], params)}')
    return "\n".join(out).encode("utf-8")


def signature_base(method: str, target_uri: str, content_digest_value: str, params: Params) -> bytes:
    """The signature base for our fixed components; params are serialized in the mapping's order."""
    # Methods are upper-cased on both sides so a client passing "post" still matches the server.
    values = (method.upper(), target_uri, content_digest_value.strip())
    return _base(list(zip(COMPONENTS, values, strict=True)), params)


def sign_request(
    identity: Identity,
    method: str,
    url: str,
    body: bytes,
    *,
    created: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The headers to add to a request: Content-Digest, Signature-Input and Signature."""
    params: dict[str, int | str] = {
        "created": int(time.time()) if created is None else created,
        "keyid": identity.public_key.text(),
        "nonce": b64url_encode(os.urandom(16)) if nonce is None else nonce,
        "alg": ALG,
    }
    digest = content_digest(body)
    signature = identity.sign(signature_base(method, url, digest, params))
    return {
        "Content-Digest": digest,
        "Signature-Input": f"{LABEL}={_inner_list(list(COMPONENTS), params)}",
        "Signature": f"{LABEL}=:{base64.b64encode(signature).decode('ascii')}:",
    }


def _lowered(headers: Mapping[str, str]) -> dict[str, str]:
    # Repeated fields combine with ", " (RFC 9110 §5.3); multidicts yield each one from items().
    out: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower()
        out[key] = f"{out[key]}, {value.strip()}" if key in out else value.strip()
    return out


def has_signature(headers: Mapping[str, str]) -> bool:
    """True if either signature header is present: half a signature must fail, not pass as unsigned."""
    names = _lowered(headers)
    return "signature-input" in names or "signature" in names


def _check_params(params: dict[str, int | str]) -> tuple[int, PublicKey, str]:
    unknown = set(params) - {"created", "keyid", "nonce", "alg"}
    if unknown:
        raise SignatureMalformed(f"Unsupported signature parameters: {', '.join(sorted(unknown))}.")
    created, keyid, nonce = params.get("created"), params.get("keyid"), params.get("nonce")
    if not isinstance(created, int) or not isinstance(keyid, str) or not isinstance(nonce, str):
        raise SignatureMalformed("created (an integer), keyid and nonce (strings) are required.")
    if params.get("alg", ALG) != ALG:
        raise SignatureMalformed(f'Only alg="{ALG}" is supported.')
    if not 0 < len(nonce) <= MAX_NONCE_CHARS:
        raise SignatureMalformed(f"The nonce must be 1 to {MAX_NONCE_CHARS} characters.")
    try:
        return created, PublicKey.from_text(keyid), nonce
    except KeyFormatError as exc:
        raise SignatureMalformed(f"keyid: {exc}.") from None


def _check_digest(header: str, body: bytes) -> None:
    digest = _member(_BYTES_MEMBER, header, "Content-Digest")
    if digest.group(1) != "sha-256":
        raise SignatureMalformed("Content-Digest must carry exactly one sha-256 member.")
    if _bytes(digest.group(2)) != hashlib.sha256(body).digest():
        raise DigestMismatch()


def verify_request(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
    max_skew: int = 300,
) -> SignedRequest:
    """Verify a request's signature; raises a SignatureError subclass on any failure."""
    names = _lowered(headers)
    if "signature-input" not in names or "signature" not in names:
        raise SignatureMissing()
    signed = _member(_INNER_LIST_MEMBER, names["signature-input"], "Signature-Input")
    signature = _member(_BYTES_MEMBER, names["signature"], "Signature")
    if signed.group(1) != signature.group(1):
        raise SignatureMalformed("Signature-Input and Signature use different labels.")
    components = [_unquote(item) for item in re.findall(_STRING, signed.group(2))]
    if len(components) != len(COMPONENTS) or set(components) != set(COMPONENTS):
        raise SignatureMalformed(f"The signature must cover exactly {' '.join(COMPONENTS)}.")
    params = _params(signed.group(3))
    created, key, nonce = _check_params(params)
    if "content-digest" not in names:
        raise SignatureMalformed("The covered Content-Digest header is missing.")
    current = time.time() if now is None else now
    if abs(current - created) > max_skew:
        raise SignatureExpired(f"created={created}, server time={int(current)}, allowed skew={max_skew}s.")
    _check_digest(names["content-digest"], body)
    values = {"@method": method.upper(), "@target-uri": url, "content-digest": names["content-digest"]}
    base = _base([(name, values[name]) for name in components], params)
    if not key.verify(base, _bytes(signature.group(2))):
        raise SignatureInvalid()
    return SignedRequest(key=key, created=created, nonce=nonce)
