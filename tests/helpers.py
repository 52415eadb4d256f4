"""Test-side HTTP helpers: raw API calls (apikey or signed) and a minimal worker that
speaks pop/submit the way any AI Horde worker does. Tests use these to drive the real
coordinator over real HTTP; the real node is tested separately."""

import base64
import io
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from PIL import Image

from protocol.httpsig import sign_request
from protocol.keys import Identity
from protocol.provenance import ResultDocument, sha256_hex, sign_result


def tiny_webp(color: tuple[int, int, int] = (200, 30, 30), size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="WEBP")
    return buffer.getvalue()


class FakeClock:
    """The coordinator's clock, moved by the test (signatures keep real time: auth doesn't use it)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Reply:
    status: int
    body: Any

    @property
    def rc(self) -> str | None:
        return self.body.get("rc") if isinstance(self.body, dict) else None


@dataclass
class Api:
    """Calls the API as one identity: an apikey, a signing key, or both."""

    base: str  # http://host:port
    apikey: str | None = None
    identity: Identity | None = None
    session: aiohttp.ClientSession | None = None
    provenance: bool = True  # ask for our extension fields (protocol/extensions.py), as our own CLI and node do

    async def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Reply:
        url = f"{self.base}/api{path}"
        raw = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        sent = {"Content-Type": "application/json", **(headers or {})}
        if self.apikey:
            sent["apikey"] = self.apikey
        if self.provenance:
            sent.setdefault("X-Horde-Provenance", "1")
        if self.identity:
            sent.update(sign_request(self.identity, method, url, raw))
        session = self.session or aiohttp.ClientSession()
        try:
            async with session.request(method, url, data=raw or None, headers=sent) as response:
                text = await response.text()
                try:
                    parsed = json.loads(text) if text else None
                except json.JSONDecodeError:
                    parsed = text
                return Reply(response.status, parsed)
        finally:
            if self.session is None:
                await session.close()

    async def post(self, path: str, body: Any = None, **kw: Any) -> Reply:
        return await self.call("POST", path, body, **kw)

    async def get(self, path: str, **kw: Any) -> Reply:
        return await self.call("GET", path, **kw)


@dataclass
class SimWorker:
    """A worker that answers every job instantly with a small valid WebP."""

    api: Api
    name: str
    models: list[str] = field(default_factory=lambda: ["tiny-sd"])
    max_pixels: int = 1024 * 1024
    sign: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    async def pop(self, wait: float = 0.0, amount: int = 1) -> Reply:
        body = {
            "name": self.name,
            "models": self.models,
            "max_pixels": self.max_pixels,
            "amount": amount,
            "wait": wait,
            "bridge_agent": "sim:1:tests",
            **self.extra,
        }
        return await self.api.post("/v2/generate/pop", body)

    async def submit(
        self,
        job_id: str,
        seed: str,
        image: bytes | None = None,
        state: str = "ok",
        inline: bool = True,
        upload_url: str | None = None,
    ) -> Reply:
        image = tiny_webp() if image is None and state != "faulted" else image
        if upload_url:
            async with aiohttp.ClientSession() as session, session.put(upload_url, data=image) as response:
                assert response.status == 200, await response.text()
        generation = "R2" if upload_url else (base64.b64encode(image).decode() if image else "")
        body: dict[str, Any] = {"id": job_id, "generation": generation, "state": state, "seed": seed}
        if self.sign and self.api.identity:
            document = ResultDocument(
                job_id=job_id, image_sha256=sha256_hex(image) if image else None, seed=seed, state=state
            )
            body["signature"] = sign_result(self.api.identity, document)
        return await self.api.post("/v2/generate/submit", body)

    async def serve_one(self, wait: float = 5.0) -> Reply | None:
        """Pop one job and submit each image it carries; None when no job came."""
        popped = await self.pop(wait=wait)
        assert popped.status == 200, popped.body
        if not popped.body["ids"]:
            return None
        last = None
        for index, job_id in enumerate(popped.body["ids"]):
            seed = popped.body["jobs"][index]["document"]["payload"]["seed"]
            last = await self.submit(job_id, seed)
        return last
