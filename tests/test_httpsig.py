import base64
from collections.abc import Iterator, Mapping

import pytest

from protocol.httpsig import (
    MAX_NONCE_CHARS,
    DigestMismatch,
    SignatureError,
    SignatureExpired,
    SignatureInvalid,
    SignatureMalformed,
    SignatureMissing,
    SignatureReplay,
    SignedRequest,
    UnknownKey,
    _base,
    content_digest,
    has_signature,
    sign_request,
    signature_base,
    verify_request,
)
from protocol.keys import Identity, PublicKey, b64url_decode

URL = "https://horde.example.org:8443/api/v2/generate/async?trace=1"
BODY = b'{"prompt": "a lighthouse at dusk", "params": {"steps": 20}}'
NOW = 1_700_000_000
IDENTITY = Identity.from_seed(bytes(range(32)))

# RFC 9421 Appendix B.1.4 (test-key-ed25519, as its JWK "d" and "x") and the B.2.6 example.
RFC_SEED = b64url_decode("n4Ni-HpISpVObnQMW0wOhCKROaIKqKtW_2ZYb2p9KcU")
RFC_PUBLIC = b64url_decode("JrQLj5P_89iXES9-vFgrIy29clF9CC_oPPsw3c5D0bs")
RFC_B26_BASE = (
    b'"date": Tue, 20 Apr 2021 02:07:55 GMT\n'
    b'"@method": POST\n'
    b'"@path": /foo\n'
    b'"@authority": example.com\n'
    b'"content-type": application/json\n'
    b'"content-length": 18\n'
    b'"@signature-params": ("date" "@method" "@path" "@authority" "content-type" "content-length")'
    b';created=1618884473;keyid="test-key-ed25519"'
)
RFC_B26_SIGNATURE = base64.b64decode(
    "wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw=="
)


def signed(body: bytes = BODY, identity: Identity = IDENTITY, created: int = NOW) -> dict[str, str]:
    return sign_request(identity, "POST", URL, body, created=created, nonce="bm9uY2U")


def verify(headers: Mapping[str, str], body: bytes = BODY, now: float = NOW, url: str = URL) -> SignedRequest:
    return verify_request("POST", url, headers, body, now=now)


def test_rfc9421_b26_published_example() -> None:
    identity = Identity.from_seed(RFC_SEED)
    assert identity.public_key.raw == RFC_PUBLIC
    # Ed25519 is deterministic, so our signer must reproduce the published bytes exactly.
    assert identity.sign(RFC_B26_BASE) == RFC_B26_SIGNATURE
    assert PublicKey(RFC_PUBLIC).verify(RFC_B26_BASE, RFC_B26_SIGNATURE)
    assert not PublicKey(RFC_PUBLIC).verify(RFC_B26_BASE.replace(b"POST", b"PUT"), RFC_B26_SIGNATURE)


def test_base_builder_reproduces_the_rfc9421_b26_signature_base() -> None:
    lines = [
        ("date", "Tue, 20 Apr 2021 02:07:55 GMT"),
        ("@method", "POST"),
        ("@path", "/foo"),
        ("@authority", "example.com"),
        ("content-type", "application/json"),
        ("content-length", "18"),
    ]
    assert _base(lines, {"created": 1618884473, "keyid": "test-key-ed25519"}) == RFC_B26_BASE


def test_content_digest_matches_rfc9530_example() -> None:
    assert content_digest(b'{"hello": "world"}') == "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"


def test_signature_base_exact_text() -> None:
    params = {"created": 1618884473, "keyid": "ed25519:AAAA", "nonce": "n-1", "alg": "ed25519"}
    digest = "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
    expected = (
        b'"@method": POST\n'
        b'"@target-uri": https://example.com/api/v2/x?y=1\n'
        b'"content-digest": sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:\n'
        b'"@signature-params": ("@method" "@target-uri" "content-digest")'
        b';created=1618884473;keyid="ed25519:AAAA";nonce="n-1";alg="ed25519"'
    )
    assert signature_base("POST", "https://example.com/api/v2/x?y=1", digest, params) == expected


def test_sign_request_header_values() -> None:
    headers = signed()
    assert set(headers) == {"Content-Digest", "Signature-Input", "Signature"}
    assert headers["Content-Digest"] == content_digest(BODY)
    assert headers["Signature-Input"] == (
        'sig1=("@method" "@target-uri" "content-digest")'
        f';created={NOW};keyid="{IDENTITY.public_key.text()}";nonce="bm9uY2U";alg="ed25519"'
    )
    assert headers["Signature"].startswith("sig1=:") and headers["Signature"].endswith(":")
    assert len(base64.b64decode(headers["Signature"][6:-1])) == 64


def test_round_trip_returns_key_created_and_nonce() -> None:
    result = verify(signed())
    assert result == SignedRequest(key=IDENTITY.public_key, created=NOW, nonce="bm9uY2U")


def test_defaults_use_current_time_and_fresh_nonces() -> None:
    first = sign_request(IDENTITY, "GET", URL, b"")
    second = sign_request(IDENTITY, "GET", URL, b"")
    one, two = (verify_request("GET", URL, h, b"") for h in (first, second))
    assert one.nonce != two.nonce and len(one.nonce) == 22
    assert one.key == IDENTITY.public_key


class LowerCaseHeaders(Mapping[str, str]):
    """A minimal non-dict mapping, as an HTTP library might hand over."""

    def __init__(self, headers: dict[str, str]) -> None:
        self._items = {name.lower(): value for name, value in headers.items()}

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


@pytest.mark.parametrize("nonce", ["n", "n" * MAX_NONCE_CHARS])
def test_nonces_of_one_to_the_most_characters_verify(nonce: str) -> None:
    headers = sign_request(IDENTITY, "POST", URL, BODY, created=NOW, nonce=nonce)
    assert verify(headers).nonce == nonce


def test_header_names_are_case_insensitive() -> None:
    headers = signed()
    assert verify(LowerCaseHeaders(headers)).key == IDENTITY.public_key
    assert verify({name.upper(): value for name, value in headers.items()}).key == IDENTITY.public_key
    extra = {"Host": "horde.example.org", "Content-Type": "application/json", **headers}
    assert verify(extra).nonce == "bm9uY2U"


def test_one_changed_body_byte_is_a_digest_mismatch() -> None:
    headers = signed()
    body = bytearray(BODY)
    body[10] ^= 0x01
    with pytest.raises(DigestMismatch):
        verify(headers, body=bytes(body))


def test_recomputed_digest_for_a_changed_body_fails_the_signature() -> None:
    headers = signed()
    tampered = BODY.replace(b"20", b"99")
    headers["Content-Digest"] = content_digest(tampered)
    with pytest.raises(SignatureInvalid):
        verify(headers, body=tampered)


def test_another_key_is_an_invalid_signature() -> None:
    headers = signed()
    other = Identity.generate().public_key.text()
    headers["Signature-Input"] = headers["Signature-Input"].replace(IDENTITY.public_key.text(), other)
    with pytest.raises(SignatureInvalid):
        verify(headers)


def test_signature_from_another_identity_claiming_our_key_fails() -> None:
    forged = signed(identity=Identity.generate())
    forged["Signature-Input"] = signed()["Signature-Input"]
    with pytest.raises(SignatureInvalid):
        verify(forged)


@pytest.mark.parametrize(
    ("method", "url"),
    [("PUT", URL), ("POST", URL.replace("trace=1", "trace=2")), ("POST", URL.replace("https", "http"))],
)
def test_changed_method_or_uri_is_an_invalid_signature(method: str, url: str) -> None:
    with pytest.raises(SignatureInvalid):
        verify_request(method, url, signed(), BODY, now=NOW)


def test_method_case_does_not_matter() -> None:
    headers = sign_request(IDENTITY, "post", URL, BODY, created=NOW)
    assert verify(headers).key == IDENTITY.public_key


def test_created_window_is_plus_minus_max_skew() -> None:
    assert verify(signed(created=NOW - 300)).created == NOW - 300
    assert verify(signed(created=NOW + 300)).created == NOW + 300
    with pytest.raises(SignatureExpired):
        verify(signed(created=NOW - 301))
    with pytest.raises(SignatureExpired):
        verify(signed(created=NOW + 301))
    with pytest.raises(SignatureExpired):
        verify_request("POST", URL, signed(created=NOW - 301), BODY, now=NOW, max_skew=300)
    assert verify_request("POST", URL, signed(created=NOW - 301), BODY, now=NOW, max_skew=400)


def replace_input(old: str, new: str) -> dict[str, str]:
    headers = signed()
    assert old in headers["Signature-Input"]
    headers["Signature-Input"] = headers["Signature-Input"].replace(old, new)
    return headers


MALFORMED = {
    "garbage input": {"Signature-Input": "not a dictionary"},
    "garbage signature": {"Signature": "sig1=abc"},
    "token not string": {"Signature-Input": 'sig1=(@method "@target-uri" "content-digest");created=1'},
    "bad base64": {"Signature": "sig1=:@@@@:"},
    "two members": {"Signature": "sig1=:AAAA:, sig2=:AAAA:"},
    "label mismatch": {"Signature": "sig2=:" + "A" * 86 + "==:"},
    "unterminated string": {"Signature-Input": 'sig1=("@method" "@target-uri" "content-digest);created=1'},
}


@pytest.mark.parametrize("change", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_headers(change: dict[str, str]) -> None:
    with pytest.raises(SignatureMalformed):
        verify({**signed(), **change})


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (' "content-digest")', ")"),  # digest not covered
        ('"@target-uri"', '"@path"'),  # wrong component
        ('"content-digest")', '"content-digest" "date")'),  # extra component
        ('"@target-uri"', '"@method"'),  # duplicate component
        (';alg="ed25519"', ';alg="rsa-pss-sha512"'),
        (';alg="ed25519"', ';alg="ed25519";expires=1'),  # unsupported parameter
        (';nonce="bm9uY2U"', ""),  # nonce missing
        (';nonce="bm9uY2U"', ';nonce=""'),
        (f";created={NOW}", f';created="{NOW}"'),  # created must be an integer
        (f";created={NOW}", f";created={NOW};created={NOW}"),  # duplicate parameter
        (IDENTITY.public_key.text(), "test-key-ed25519"),  # keyid not our key text form
        (IDENTITY.public_key.text(), IDENTITY.public_key.text()[:-4]),  # keyid wrong length
        (f";created={NOW}", ";created=1.5"),  # decimals are not supported
    ],
)
def test_malformed_signature_input(old: str, new: str) -> None:
    with pytest.raises(SignatureMalformed):
        verify(replace_input(old, new))


def test_missing_content_digest_is_malformed() -> None:
    headers = signed()
    del headers["Content-Digest"]
    with pytest.raises(SignatureMalformed):
        verify(headers)


def test_non_sha256_content_digest_is_malformed() -> None:
    headers = signed()
    headers["Content-Digest"] = "sha-512=:AAAA:"
    with pytest.raises(SignatureMalformed):
        verify(headers)


@pytest.mark.parametrize("keep", [(), ("Signature-Input",), ("Signature",), ("Content-Digest",)])
def test_missing_signature_headers(keep: tuple[str, ...]) -> None:
    headers = {name: value for name, value in signed().items() if name in keep}
    with pytest.raises(SignatureMissing):
        verify(headers)


def test_has_signature() -> None:
    assert has_signature(signed())
    assert has_signature({"signature-input": "x"})
    assert has_signature({"SIGNATURE": "x"})
    assert not has_signature({"Content-Type": "application/json"})


def test_error_family_and_return_codes() -> None:
    expected = {
        SignatureMissing: "SignatureMissing",
        SignatureMalformed: "SignatureMalformed",
        DigestMismatch: "DigestMismatch",
        SignatureExpired: "SignatureExpired",
        SignatureInvalid: "InvalidSignature",
        UnknownKey: "UnknownSignatureKey",
        SignatureReplay: "SignatureReplay",
    }
    for cls, rc in expected.items():
        assert issubclass(cls, SignatureError)
        assert cls.rc == rc
        assert isinstance(cls.message, str) and cls.message
        error = cls("detail here")
        assert error.rc == rc and error.message.endswith("detail here") and str(error) == error.message
        assert cls().message == cls.message
