"""Keyed hashes from the coordinator's secret: stored apikeys and upload tokens.

Apikeys are long random strings, so a keyed SHA-256 (HMAC) is as strong as a slow hash for
them, and it lets the database index the hash for an O(1) lookup.
"""

import hashlib
import hmac
import secrets
import string
import time

ANONYMOUS_APIKEY = "0000000000"


APIKEY_ALPHABET = string.ascii_letters + string.digits


def new_apikey() -> str:
    """22 letters and digits (131 bits). No '-' or '_': a key that starts with '-' reads as an
    option to argparse and to most command lines, so `horde --apikey KEY` would refuse it."""
    return "".join(secrets.choice(APIKEY_ALPHABET) for _ in range(22))


class Tokens:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, *parts: str) -> str:
        return hmac.new(self._secret, "|".join(parts).encode(), hashlib.sha256).hexdigest()

    def apikey_hash(self, apikey: str) -> str:
        return self._mac("apikey", apikey)

    def upload_token(self, job_id: str, worker_id: str, lifetime: float) -> str:
        """A token for one assignment: it stops working once the job is handed to another node."""
        expires = str(int(time.time() + lifetime))
        return f"{expires}.{self._mac('upload', job_id, worker_id, expires)[:32]}"

    def upload_token_valid(self, job_id: str, worker_id: str, token: str) -> bool:
        expires, _, mac = token.partition(".")
        if not (expires.isascii() and expires.isdigit() and len(expires) < 16) or int(expires) < time.time():
            return False
        return hmac.compare_digest(mac, self._mac("upload", job_id, worker_id, expires)[:32])
