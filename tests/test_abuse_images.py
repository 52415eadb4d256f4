"""Hostile participants, images that reach volunteers (issue 11, cases 3 and 10).

The coordinator takes sources only as PNG, JPEG or WebP, bounds their dimensions before decoding, and
hands nodes its own re-encoding (no EXIF, no ICC), which is what the signed job document hashes. The
node checks the coordinator's signature before it fetches anything, fetches only from the
coordinator's origin or a URL the job document signs, stops reading at a byte cap, decodes only
PNG/JPEG/WebP, and never quotes what it fetched in its fault reason.
"""

import asyncio
import io
import struct
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from PIL import EpsImagePlugin, Image, ImageCms, ImageFile

from node.config import NodeConfig
from node.coordinator_api import CoordinatorClient
from node.daemon import NodeDaemon
from protocol.jobs import SubmitRequest, SubmitResult
from protocol.keys import Identity
from protocol.provenance import sha256_hex
from tests.api_support import b64, count, custom_coordinator, node, pop_job, requester, small
from tests.conftest import RunningCoordinator, free_port
from tests.node_support import RecordingConsole, node_config, running, until

# The bounds docs/security.md states, written out again on purpose: a test that read them from the
# code would pass whatever the code said.
MAX_SOURCE_PIXELS = 3072 * 3072
MAX_SOURCE_SIDE = 8192
MAX_SOURCE_BYTES = 40 * 1024 * 1024
SECRET = b"SECRET router admin page: password=hunter2"


# -- images in every format ---------------------------------------------------------------------------


def encoded(fmt: str, size: tuple[int, int] = (48, 32), mode: str = "RGB", **options: Any) -> bytes:
    image = Image.new(mode, size, (10, 120, 200) if mode == "RGB" else (10, 120, 200, 128))
    for x in range(size[0]):  # some structure, so a re-encoding that moved pixels would show
        image.putpixel((x, x % size[1]), (250, 250, 0) if mode == "RGB" else (250, 250, 0, 255))
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A small PNG whose header claims `width`×`height`: decoding it would allocate that much."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def jpeg_with_metadata() -> bytes:
    """A 48×32 JPEG whose EXIF says "rotate 90°" and names a camera, with an ICC profile."""
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the viewer turns it 90° clockwise, so it shows 32×48
    exif[0x010F] = "SecretCam"  # Make
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return encoded("JPEG", exif=exif.tobytes(), icc_profile=icc, quality=95)


def png_with_metadata() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"
    return encoded("PNG", exif=exif.tobytes())


def metadata_of(data: bytes) -> dict[str, Any]:
    with Image.open(io.BytesIO(data)) as image:
        return {
            key: image.info[key] for key in ("exif", "icc_profile", "xmp", "XML:com.adobe.xmp") if image.info.get(key)
        } | ({"exif tags": dict(image.getexif())} if image.getexif() else {})


def pixels(data: bytes, mode: str = "RGB") -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert(mode).tobytes()


@pytest.fixture
def eps_opened(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every time Pillow's EPS plugin (the one that runs Ghostscript) parses a file."""
    calls: list[int] = []
    original = EpsImagePlugin.EpsImageFile._open

    def recording(self: EpsImagePlugin.EpsImageFile) -> None:
        calls.append(1)
        original(self)

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", recording)
    return calls


@pytest.fixture
def pixel_loads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The size of every image whose pixels Pillow decodes."""
    loads: list[tuple[int, int]] = []
    original = ImageFile.ImageFile.load

    def recording(self: ImageFile.ImageFile) -> Any:
        loads.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", recording)
    return loads


def stored_files(coordinator: RunningCoordinator) -> list[str]:
    root = coordinator.config.image_root
    return sorted(path.name for path in root.rglob("*") if path.is_file()) if root.exists() else []


# -- the coordinator's intake -------------------------------------------------------------------------

REFUSED_FORMATS = ["EPS", "TIFF", "PCX", "SGI", "BMP", "GIF"]


@pytest.mark.parametrize("fmt", REFUSED_FORMATS)
async def test_sources_in_other_formats_are_refused_before_anything_is_stored(
    coordinator: RunningCoordinator, fmt: str, eps_opened: list[int]
) -> None:
    alice = await coordinator.create_account("alice", kudos=100)
    api = requester(coordinator, alice)
    other = encoded(fmt)
    for body in (
        {**small(), "source_image": b64(other), "source_processing": "img2img"},
        {**small(), "source_image": b64(encoded("PNG")), "source_mask": b64(other), "source_processing": "inpainting"},
    ):
        reply = await api.post("/v2/generate/async", body)
        assert (reply.status, reply.rc) == (400, "SourceImageUnreadable"), reply.body
        assert "PNG, JPEG or WebP" in reply.body["message"]
    assert await count(coordinator, "requests") == 0 and await count(coordinator, "jobs") == 0
    assert stored_files(coordinator) == []
    assert eps_opened == []  # the format is told from the header by the three allowed plugins only


@pytest.mark.parametrize(
    ("width", "height"),
    [(4000, 4000), (100_000, 100_000), (MAX_SOURCE_SIDE + 1, 64), (64, MAX_SOURCE_SIDE + 1)],
)
async def test_a_png_declaring_huge_dimensions_is_refused_without_decoding(
    coordinator: RunningCoordinator, width: int, height: int, pixel_loads: list[tuple[int, int]]
) -> None:
    alice = await coordinator.create_account("alice", kudos=100)
    huge = png_declaring(width, height)
    assert len(huge) < 200
    reply = await requester(coordinator, alice).post(
        "/v2/generate/async", {**small(), "source_image": b64(huge), "source_processing": "img2img"}
    )
    assert (reply.status, reply.rc) == (400, "SourceImageResolutionExceeded"), reply.body
    assert f"at most {MAX_SOURCE_PIXELS} pixels and {MAX_SOURCE_SIDE} on a side" in reply.body["message"]
    assert pixel_loads == []  # refused on the header: not one pixel decoded
    assert await count(coordinator, "requests") == 0 and stored_files(coordinator) == []


async def test_the_largest_source_allowed_is_accepted(coordinator: RunningCoordinator) -> None:
    alice = await coordinator.create_account("alice", kudos=100)
    wide = encoded("PNG", size=(MAX_SOURCE_SIDE, MAX_SOURCE_PIXELS // MAX_SOURCE_SIDE))
    reply = await requester(coordinator, alice).post(
        "/v2/generate/async", {**small(), "source_image": b64(wide), "source_processing": "img2img"}
    )
    assert reply.status == 202, reply.body


async def popped_source(coordinator: RunningCoordinator, body: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """Submit `body`, pop its job as a node would, fetch the source it names: (bytes, job document)."""
    alice = await coordinator.create_account("alice", kudos=100)
    reply = await requester(coordinator, alice).post("/v2/generate/async", body)
    assert reply.status == 202, reply.body
    owner = await coordinator.create_account("owner")
    popped = await pop_job(node(coordinator, owner, "n1", extra={"allow_painting": True}))
    async with aiohttp.ClientSession() as session, session.get(popped.body["source_image"]) as response:
        assert response.status == 200
        return await response.read(), popped.body["jobs"][0]["document"]


@pytest.mark.parametrize(
    ("label", "source", "shown_size"),
    [
        pytest.param("jpeg with exif and icc", jpeg_with_metadata(), (32, 48), id="jpeg-exif-icc"),
        pytest.param("png with exif", png_with_metadata(), (48, 32), id="png-exif"),
        pytest.param("webp", encoded("WEBP", lossless=True), (48, 32), id="webp"),
    ],
)
async def test_accepted_sources_reach_nodes_as_the_coordinators_own_encoding(
    coordinator: RunningCoordinator, label: str, source: bytes, shown_size: tuple[int, int]
) -> None:
    fetched, document = await popped_source(
        coordinator, {**small(), "source_image": b64(source), "source_processing": "img2img"}
    )
    assert fetched != source
    assert sha256_hex(fetched) == document["source_image_sha256"]
    assert metadata_of(fetched) == {}  # no camera, no profile, no orientation tag left for a decoder to parse
    with Image.open(io.BytesIO(fetched)) as image:
        assert image.format in ("PNG", "JPEG", "WEBP") and image.size == shown_size
    if label != "jpeg with exif and icc":  # lossless sources keep every pixel
        assert pixels(fetched) == pixels(source)


async def test_an_inpainting_source_keeps_its_alpha(coordinator: RunningCoordinator) -> None:
    source = encoded("PNG", mode="RGBA")
    fetched, document = await popped_source(
        coordinator, {**small(), "source_image": b64(source), "source_processing": "inpainting"}
    )
    assert sha256_hex(fetched) == document["source_image_sha256"]
    with Image.open(io.BytesIO(fetched)) as image:
        assert "A" in image.getbands()
    assert pixels(fetched, "RGBA") == pixels(source, "RGBA")


# -- the node -----------------------------------------------------------------------------------------


class OtherHost:
    """A web server on loopback that is not the coordinator: it counts what it is asked."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.sent: list[int] = []  # bytes written per endless answer, until the reader went away
        self.body: bytes | None = None  # served with 200 when set; otherwise an endless stream or a page
        self.endless = False

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits.append(request.path)
        if self.body is not None:
            return web.Response(body=self.body, content_type="image/webp")
        if not self.endless:
            return web.Response(status=403, body=SECRET, content_type="text/html")
        response = web.StreamResponse()
        await response.prepare(request)
        chunk = b"\x89PNG" + b"\0" * (256 * 1024 - 4)
        self.sent.append(0)
        try:
            while self.sent[-1] < 3 * MAX_SOURCE_BYTES:  # bounded, so a node that reads it all still finishes
                await response.write(chunk)
                self.sent[-1] += len(chunk)
        except (ConnectionError, asyncio.CancelledError):
            pass
        return response


@pytest.fixture
async def other_host() -> AsyncIterator[tuple[OtherHost, str]]:
    host = OtherHost()
    app = web.Application()
    app.router.add_get("/{tail:.*}", host.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield host, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def sqlite_coordinator(tmp_path: Path) -> AsyncIterator[RunningCoordinator]:
    """What the node does with a source does not depend on the coordinator's engine."""
    async with custom_coordinator(tmp_path, None) as running_coordinator:
        yield running_coordinator


@pytest.fixture
def submits(monkeypatch: pytest.MonkeyPatch) -> list[SubmitRequest]:
    """Every submit the node sends (the real submit still runs)."""
    sent: list[SubmitRequest] = []
    original = CoordinatorClient.submit_result

    async def submit_result(self: CoordinatorClient, request: SubmitRequest) -> SubmitResult:
        sent.append(request)
        return await original(self, request)

    monkeypatch.setattr(CoordinatorClient, "submit_result", submit_result)
    return sent


def source_reads(monkeypatch: pytest.MonkeyPatch, coordinator: RunningCoordinator) -> list[str]:
    """Names of the sources the coordinator served (a node fetched them from its own origin)."""
    images = coordinator.broker.services.images
    reads: list[str] = []
    original = images.read

    async def read(name: str) -> bytes | None:
        if name.endswith(".src"):
            reads.append(name)
        return await original(name)

    monkeypatch.setattr(images, "read", read)
    return reads


def hand_out_source(monkeypatch: pytest.MonkeyPatch, coordinator: RunningCoordinator, url: str) -> None:
    """Make the real coordinator's pops name `url` as the source, outside anything it signs (what a
    compromised coordinator, or anyone between it and the node on plain HTTP, could do)."""

    async def source_url(name: str | None, *args: Any, **kwargs: Any) -> str | None:
        return url if name else None

    monkeypatch.setattr(coordinator.broker.dispatcher, "_source_url", source_url)


def sign_bucket_urls(monkeypatch: pytest.MonkeyPatch, coordinator: RunningCoordinator, base: str) -> None:
    """The coordinator's image store presigns source GETs on another host, as a bucket does."""
    images = coordinator.broker.services.images

    async def presigned_get(name: str, lifetime: float) -> str | None:
        return f"{base}/bucket/{name}?X-Signature=abc" if name.endswith(".src") else None

    monkeypatch.setattr(images, "presigned_get", presigned_get)


async def img2img(coordinator: RunningCoordinator) -> str:
    alice = await coordinator.create_account("alice", kudos=100)
    body = {
        "prompt": "a green field",
        "models": ["tiny-sd"],
        "source_image": b64(encoded("PNG")),
        "source_processing": "img2img",
        "params": {"width": 64, "height": 64, "steps": 2, "denoising_strength": 0.5},
    }
    reply = await requester(coordinator, alice).post("/v2/generate/async", body)
    assert reply.status == 202, reply.body
    return str(reply.body["id"])


async def pinned_node(coordinator: RunningCoordinator, tmp_path: Path, tiny: Path, **overrides: Any) -> NodeDaemon:
    owner = await coordinator.create_account("owner")
    config: NodeConfig = node_config(
        tmp_path / "node",
        coordinator.url,
        owner.apikey,
        tiny,
        coordinator_public_key=coordinator.public_key.text(),
        **overrides,
    )
    return NodeDaemon(config, console=RecordingConsole())


def fault_reasons(daemon: NodeDaemon) -> list[str]:
    console = daemon.console
    assert isinstance(console, RecordingConsole)
    return [str(fields["reason"]) for kind, fields in console.events if kind in ("job_faulted", "job_refused")]


def first_fault(submitted: list[SubmitRequest]) -> dict[str, Any]:
    faulted = [request for request in submitted if request.state == "faulted"]
    assert faulted, "no faulted submit"
    return faulted[0].gen_metadata[0].model_dump()


@pytest.mark.usefixtures("one_torch_thread")
async def test_a_source_url_on_another_host_is_refused_without_fetching(
    sqlite_coordinator: RunningCoordinator,
    other_host: tuple[OtherHost, str],
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    submits: list[SubmitRequest],
) -> None:
    host, base = other_host
    hand_out_source(monkeypatch, sqlite_coordinator, f"{base}/admin")
    daemon = await pinned_node(sqlite_coordinator, tmp_path, tiny_model_dir)
    await img2img(sqlite_coordinator)
    async with running(daemon):
        await until(lambda: daemon.stats.jobs_submitted >= 1, what="the refusal's submit")
    assert host.hits == []
    assert daemon.stats.jobs_refused >= 1 and daemon.jobs_done == 0
    assert all("SECRET" not in reason and "hunter2" not in reason for reason in fault_reasons(daemon))
    fault = first_fault(submits)
    assert (fault["type"], fault["value"]) == ("source_image", "download_failed")
    assert "SECRET" not in (fault["ref"] or "")


@pytest.mark.usefixtures("one_torch_thread")
async def test_a_job_whose_signature_fails_is_refused_before_any_fetch(
    sqlite_coordinator: RunningCoordinator, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = source_reads(monkeypatch, sqlite_coordinator)
    owner = await sqlite_coordinator.create_account("owner")
    impostor = Identity.generate().public_key.text()  # the node trusts a different coordinator key
    daemon = NodeDaemon(
        node_config(
            tmp_path / "node", sqlite_coordinator.url, owner.apikey, tiny_model_dir, coordinator_public_key=impostor
        ),
        console=RecordingConsole(),
    )
    await img2img(sqlite_coordinator)
    async with running(daemon):
        await until(lambda: daemon.stats.jobs_refused >= 1 and daemon.stats.jobs_submitted >= 1, what="a refusal")
    assert reads == []  # the source, on the coordinator's own origin, was never fetched
    assert any("does not verify" in reason for reason in fault_reasons(daemon))


@pytest.mark.usefixtures("one_torch_thread")
async def test_an_oversized_source_is_cut_off_at_the_cap(
    sqlite_coordinator: RunningCoordinator,
    other_host: tuple[OtherHost, str],
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    submits: list[SubmitRequest],
) -> None:
    host, base = other_host
    host.endless = True
    sign_bucket_urls(monkeypatch, sqlite_coordinator, base)  # a URL the job document signs: allowed
    daemon = await pinned_node(sqlite_coordinator, tmp_path, tiny_model_dir)
    await img2img(sqlite_coordinator)
    async with running(daemon):
        await until(lambda: daemon.stats.jobs_submitted >= 1, timeout=60, what="the fault's submit")
    assert len(host.hits) >= 1
    # The node stopped reading at the cap; what the server got out beyond it sat in socket buffers.
    assert host.sent and max(host.sent) < MAX_SOURCE_BYTES + 16 * 1024 * 1024
    fault = first_fault(submits)
    assert (fault["type"], fault["value"]) == ("source_image", "download_failed")
    assert f"more than {MAX_SOURCE_BYTES} bytes" in fault["ref"]
    assert daemon.jobs_done == 0


@pytest.mark.usefixtures("one_torch_thread")
async def test_a_source_at_a_signed_url_is_fetched_and_used(
    sqlite_coordinator: RunningCoordinator,
    other_host: tuple[OtherHost, str],
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bucket case: a source URL on another host is fine when the job document signs it."""
    host, base = other_host
    sign_bucket_urls(monkeypatch, sqlite_coordinator, base)
    daemon = await pinned_node(sqlite_coordinator, tmp_path, tiny_model_dir)
    request_id = await img2img(sqlite_coordinator)
    async with sqlite_coordinator.broker.services.database.reader() as tx:
        request = await tx.get_request(request_id)
    assert request is not None and request.source_image
    host.body = await sqlite_coordinator.broker.services.images.read(request.source_image)
    async with running(daemon):
        await until(lambda: daemon.jobs_done >= 1, timeout=60, what="the img2img job")
    assert host.hits and host.hits[0] == f"/bucket/{request.source_image}"


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("fmt", ["EPS", "TIFF"])
async def test_a_source_in_another_format_is_never_decoded_by_the_node(
    sqlite_coordinator: RunningCoordinator,
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    submits: list[SubmitRequest],
    eps_opened: list[int],
    fmt: str,
) -> None:
    """An AI Horde-style coordinator (no job signatures) hands out an inline EPS or TIFF source."""

    async def no_coordinator_info(self: CoordinatorClient) -> None:
        return None  # apikey-only mode, as with AI Horde: nothing signed, nothing to check a hash against

    monkeypatch.setattr(CoordinatorClient, "coordinator_info", no_coordinator_info)
    hand_out_source(monkeypatch, sqlite_coordinator, "data:image/png;base64," + b64(encoded(fmt)))
    daemon = await pinned_node(sqlite_coordinator, tmp_path, tiny_model_dir)
    await img2img(sqlite_coordinator)
    async with running(daemon):
        await until(lambda: daemon.stats.jobs_submitted >= 1, what="the fault's submit")
    assert eps_opened == []  # Ghostscript's plugin never saw the bytes
    fault = first_fault(submits)
    assert (fault["type"], fault["value"]) == ("source_image", "parse_failed")
    console = daemon.console
    assert isinstance(console, RecordingConsole) and "job_started" not in console.kinds()
