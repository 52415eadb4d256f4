"""Checking a webhook POST offline: the coordinator signed it (RFC 9421, protocol/httpsig.py) over
its method, the webhook URL and the body's digest. Pure: no network."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from protocol.httpsig import SignatureError, verify_request
from protocol.keys import PublicKey

# A webhook is checked when it arrives or long after (from a log): its `created` is not checked.
ANY_AGE = 10**10


@dataclass
class WebhookReport:
    ok: bool
    signer: str | None = None
    event: str | None = None
    request_id: str | None = None
    problems: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "signer": self.signer,
            "event": self.event,
            "request_id": self.request_id,
            "problems": self.problems,
        }


def parse_headers(text: str) -> dict[str, str]:
    """`Name: value` lines (an HTTP header block, as a receiver logs it); other lines are ignored."""
    headers: dict[str, str] = {}
    for line in text.splitlines():
        name, colon, value = line.partition(":")
        if colon and name.strip() and " " not in name.strip():
            headers[name.strip()] = value.strip()
    return headers


def verify_webhook(url: str, headers: dict[str, str], body: bytes, coordinator_key: str | None) -> WebhookReport:
    """Whether `body` was POSTed to `url` by the coordinator holding `coordinator_key` (or by whichever key
    signed it, named in the report, when no key is pinned) and is unchanged."""
    try:
        signed = verify_request("POST", url, headers, body, max_skew=ANY_AGE)
    except SignatureError as error:
        return WebhookReport(ok=False, problems=[error.message])
    signer = signed.key.text()
    problems = []
    if coordinator_key is not None and signer != PublicKey.from_text(coordinator_key).text():
        problems.append(f"signed by {signer}, not by the coordinator {coordinator_key}")
    try:
        payload = json.loads(body)
    except ValueError:
        payload = {}
    return WebhookReport(
        ok=not problems,
        signer=signer,
        event=payload.get("event"),
        request_id=payload.get("request_id"),
        problems=problems,
    )
