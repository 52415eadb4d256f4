"""The status page in a real headless Chromium (Debian's, driven by Playwright; no browser download):
every panel shows a live coordinator's data with a real node working, the image check accepts a
good image and rejects a tampered one, and the console stays free of errors."""

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from client.cli import main as horde
from node.daemon import NodeDaemon
from tests.api_support import custom_coordinator, node, pop_job, requester, seed_of, small
from tests.conftest import RunningCoordinator
from tests.helpers import Api
from tests.node_support import RecordingConsole, finished, node_config, request_images, running

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
# Where the README's screenshot comes from: set to a path to refresh docs/status-page.png.
SCREENSHOT = os.environ.get("HORDE_STATUS_SCREENSHOT")


async def network_at_work(coordinator: RunningCoordinator, tmp_path: Path, tiny_model_dir: Path) -> dict[str, Any]:
    """Two images made by a real node (and saved with their sidecars by `horde wait`), and one fault."""
    owner = await coordinator.create_account("owner")
    alice = await coordinator.create_account("alice", kudos=200)
    api = Api(coordinator.url, apikey=alice.apikey)
    daemon = NodeDaemon(
        node_config(tmp_path / "node", coordinator.url, owner.apikey, tiny_model_dir), console=RecordingConsole()
    )
    flaky = node(coordinator, owner, "flaky", models=["other-model"])
    async with running(daemon):
        request_id = await request_images(api, n=2, steps=3)
        status = await finished(api, request_id, timeout=90)
        faulty = await requester(coordinator, alice).post("/v2/generate/async", small(models=["other-model"]))
        assert faulty.status == 202
        popped = await pop_job(flaky)
        assert (await flaky.submit(popped.body["ids"][0], seed_of(popped), state="faulted")).status == 200
        out = tmp_path / "saved"
        argv = ["wait", request_id, "--out", str(out), "--url", coordinator.url, "--apikey", alice.apikey, "-q"]
        assert await asyncio.to_thread(horde, argv) == 0
    images = sorted(out.glob("*.webp"))
    assert len(images) == 2 and len(status["generations"]) == 2
    return {
        "request_id": request_id,
        "image": images[0],
        "sidecar": images[0].with_suffix(".json"),
        "node": status["generations"][0]["worker_name"],
    }


@pytest.mark.timeout(240)
async def test_every_panel_shows_the_live_network(tmp_path: Path, tiny_model_dir: Path) -> None:
    from playwright.async_api import async_playwright, expect

    async with custom_coordinator(tmp_path, None) as coordinator:
        work = await network_at_work(coordinator, tmp_path, tiny_model_dir)
        tampered = tmp_path / "tampered" / work["image"].name
        tampered.parent.mkdir()
        data = bytearray(work["image"].read_bytes())
        data[-1] ^= 0x01
        tampered.write_bytes(bytes(data))
        errors: list[str] = []
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = await browser.new_page(viewport={"width": 1280, "height": 1100})
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            await page.goto(coordinator.url + "/")

            key = coordinator.public_key.text()
            await expect(page.locator("#coordinator-key")).to_have_text(key)
            await expect(page.locator("#nodes tbody tr")).to_have_count(2)  # the real node and the flaky one
            await expect(page.locator("#nodes tbody")).to_contain_text(work["node"])
            await expect(page.locator("#nodes tbody")).to_contain_text("megapixelsteps per second")
            await expect(page.locator("#models tbody")).to_contain_text("tiny-sd")
            await expect(page.locator("#totals-hour")).to_have_text("2 images, 1 faults")
            await expect(page.locator("#totals-day")).to_have_text("2 images, 1 faults")
            await expect(page.locator("#chart-hour canvas")).to_have_count(1)
            await expect(page.locator("#chart-day canvas")).to_have_count(1)
            await expect(page.locator("#ledger-status")).to_have_attribute("data-state", "ok")
            await expect(page.locator("#ledger-status")).to_contain_text("chain verifies")
            ledger_rows = await page.locator("#ledger tbody tr").count()
            assert ledger_rows >= 3  # the grant, then a spend and a reward per image
            await expect(page.locator("#ledger tbody")).to_contain_text("reward")

            # The image check, by request id: both images, both signatures valid.
            await page.fill("#check-id", work["request_id"])
            await page.click("#check-request")
            result = page.locator("#check-result")
            await expect(result).to_have_attribute("data-state", "ok")
            await expect(result).to_contain_text(f"by node {work['node']}")
            assert (await result.inner_text()).count("image signature by the node: valid") == 2
            if SCREENSHOT:
                await page.screenshot(path=SCREENSHOT, full_page=True)

            # ...and from files: the saved image with its sidecar, then a tampered copy.
            await page.set_input_files("#check-files", [str(work["image"]), str(work["sidecar"])])
            await expect(result).to_contain_text(work["image"].name)
            await expect(result).to_have_attribute("data-state", "ok")
            await expect(result).to_contain_text("job signature by the coordinator: valid")
            await page.set_input_files("#check-files", [str(tampered), str(work["sidecar"])])
            await expect(result).to_have_attribute("data-state", "failed")
            await expect(result).to_contain_text("NOT VERIFIED")
            await expect(result).to_contain_text("the image's SHA-256 is")

            # An unknown request is refused with the API's message.
            await page.fill("#check-id", "no-such-request")
            await page.click("#check-request")
            await expect(result).to_have_attribute("data-state", "failed")
            await browser.close()
        # 404 of the unknown request shows as a failed resource load; nothing else may.
        assert [e for e in errors if "404" not in e] == [], errors
