"""Signed requests (RFC 9421), key-bound nodes and accounts, signed results and image provenance."""

import base64
import json
import time
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from protocol.httpsig import sign_request
from protocol.keys import Identity, PublicKey
from protocol.provenance import (
    JobDocument,
    ResultDocument,
    request_digest,
    sha256_hex,
    sign_result,
    verify_job,
    verify_provenance,
)
from tests.api_support import (
    RequesterAndNode,
    balance,
    generate,
    job_state,
    node,
    pop_job,
    raw_call,
    register_signed,
    requester,
    seed_of,
    signed_headers,
    small,
    snapshot,
)
from tests.conftest import POSTGRES_DSN, RunningCoordinator, coordinator_config, start_coordinator
from tests.helpers import Api, SimWorker, tiny_webp
from tests.pg import fresh_database

GENERATE = "/v2/generate/async"


async def test_registered_key_signs_requests_without_apikey(coordinator: RunningCoordinator) -> None:
    identity, registered = await register_signed(coordinator, "keyholder")
    assert registered.status == 200, registered.body
    assert registered.body["public_key"] == identity.public_key.text()
    assert registered.body["username"].startswith("keyholder#")
    account_id = registered.body["id"]
    await coordinator.grant(account_id, 50)
    api = Api(coordinator.url, identity=identity)
    me = await api.get("/v2/find_user")
    assert me.status == 200 and me.body["id"] == account_id and me.body["public_key"] == identity.public_key.text()
    accepted = await api.post(GENERATE, small())
    assert accepted.status == 202, accepted.body
    stored = (await coordinator.broker.requests.load(accepted.body["id"]))[0]
    assert stored.account_id == account_id
    # The apikey handed out at registration works too.
    assert (await Api(coordinator.url, apikey=registered.body["apikey"]).get("/v2/find_user")).body["id"] == account_id


async def tampered_cases(coordinator: RunningCoordinator, identity: Identity) -> list[tuple[str, bytes, dict]]:
    body = json.dumps(small()).encode()
    good = signed_headers(identity, coordinator, "POST", GENERATE, body)
    changed = body.replace(b"a cat", b"a bat")
    other = Identity.generate()
    foreign = signed_headers(other, coordinator, "POST", GENERATE, body)
    # Right keyid, signature made by another key.
    wrong_sig = dict(foreign)
    wrong_sig["Signature-Input"] = good["Signature-Input"]
    return [
        ("DigestMismatch", changed, good),
        ("UnknownSignatureKey", body, foreign),
        ("InvalidSignature", body, wrong_sig),
        (
            "SignatureExpired",
            body,
            signed_headers(identity, coordinator, "POST", GENERATE, body, created=int(time.time()) - 301),
        ),
        # A minute beyond the 300 s window, not a second: the cases are sent after they are all built, and
        # on a loaded machine a second passes in between, which would bring a +301 s date into the window.
        (
            "SignatureExpired",
            body,
            signed_headers(identity, coordinator, "POST", GENERATE, body, created=int(time.time()) + 360),
        ),
        ("InvalidSignature", body, signed_headers(identity, coordinator, "POST", "/v2/generate/pop", body)),
        ("SignatureMalformed", body, {**good, "Signature": "sig1=:!!!:"}),
        ("SignatureMissing", body, {k: v for k, v in good.items() if k != "Signature"}),
    ]


async def test_tampered_signed_requests_are_refused_and_change_nothing(coordinator: RunningCoordinator) -> None:
    identity, registered = await register_signed(coordinator, "keyholder")
    await coordinator.grant(registered.body["id"], 50)
    before = await snapshot(coordinator)
    for rc, body, headers in await tampered_cases(coordinator, identity):
        reply = await raw_call(coordinator, "POST", GENERATE, body, headers)
        assert (reply.status, reply.rc) == (401, rc), (rc, reply.body)
    assert await snapshot(coordinator) == before


async def test_replayed_nonce_is_refused(coordinator: RunningCoordinator) -> None:
    identity, registered = await register_signed(coordinator, "keyholder")
    await coordinator.grant(registered.body["id"], 50)
    body = json.dumps(small()).encode()
    headers = signed_headers(identity, coordinator, "POST", GENERATE, body)
    first = await raw_call(coordinator, "POST", GENERATE, body, headers)
    assert first.status == 202
    before = await snapshot(coordinator)
    replay = await raw_call(coordinator, "POST", GENERATE, body, headers)
    assert (replay.status, replay.rc) == (401, "SignatureReplay")
    # A fresh signature with the same explicit nonce is a replay too.
    same_nonce = signed_headers(
        identity,
        coordinator,
        "POST",
        GENERATE,
        body,
        nonce=headers["Signature-Input"].split('nonce="')[1].split('"')[0],
    )
    assert (await raw_call(coordinator, "POST", GENERATE, body, same_nonce)).rc == "SignatureReplay"
    assert await snapshot(coordinator) == before


@pytest.mark.skipif(not POSTGRES_DSN, reason="several processes share PostgreSQL only: set HORDE_TEST_POSTGRES_DSN")
async def test_a_nonce_used_on_one_process_is_refused_by_another(tmp_path: Path) -> None:
    """Two coordinator processes on one database behind one public URL, as the compose replicas run."""
    public_url = "https://horde.example.org"
    async with fresh_database(POSTGRES_DSN or "") as url:
        config = replace(coordinator_config(tmp_path / "shared", url), public_url=public_url)
        first = await start_coordinator(config)
        second = await start_coordinator(config)
        try:
            owner = await first.create_account("owner")
            identity = Identity.generate()

            def signed() -> dict[str, str]:
                return {"apikey": owner.apikey, **sign_request(identity, "GET", f"{public_url}/api/v2/find_user", b"")}

            headers = signed()
            assert (await raw_call(first, "GET", "/v2/find_user", b"", headers)).status == 200
            replay = await raw_call(second, "GET", "/v2/find_user", b"", headers)
            assert (replay.status, replay.rc) == (401, "SignatureReplay")
            assert (await raw_call(second, "GET", "/v2/find_user", b"", signed())).status == 200
        finally:
            await second.stop()
            await first.stop()


async def test_registration_must_prove_the_key(coordinator: RunningCoordinator) -> None:
    claimed, signer = Identity.generate(), Identity.generate()
    before = await snapshot(coordinator)
    mismatched = await Api(coordinator.url, identity=signer).post(
        "/v2/accounts", {"username": "thief", "public_key": claimed.public_key.text()}
    )
    assert mismatched.status == 401, mismatched.body
    unsigned = await Api(coordinator.url).post(
        "/v2/accounts", {"username": "thief", "public_key": claimed.public_key.text()}
    )
    assert unsigned.status == 401
    assert await snapshot(coordinator) == before
    _, first = await register_signed(coordinator, "owner-of-key", claimed)
    assert first.status == 200
    # The key is taken now, and so is the name.
    _, again = await register_signed(coordinator, "second", claimed)
    assert again.status == 400 and again.rc == "NameAlreadyExists"
    # The message names the clash, and the key's holder, so the user knows which account to use.
    assert again.body["message"].startswith(f"This key is already registered, as owner-of-key#{first.body['id']}")
    same_name = await Api(coordinator.url).post("/v2/accounts", {"username": "OWNER-of-key"})
    assert same_name.status == 400 and same_name.rc == "NameAlreadyExists"
    assert same_name.body["message"] == "The username OWNER-of-key is already taken; choose another."
    bad_name = await Api(coordinator.url).post("/v2/accounts", {"username": "no spaces please"})
    assert bad_name.status == 400


async def test_node_key_is_bound_on_first_signed_pop(coordinator: RunningCoordinator, pair: RequesterAndNode) -> None:
    api, owner = pair.api, pair.owner
    first_key, second_key = Identity.generate(), Identity.generate()
    bound = node(coordinator, owner, "keyed", identity=first_key)
    assert (await bound.pop()).status == 200
    [listed] = (await Api(coordinator.url).get("/v2/workers")).body
    assert listed["public_key"] == first_key.public_key.text()
    await generate(api, small())
    impostor = await node(coordinator, owner, "keyed", identity=second_key).pop()
    assert (impostor.status, impostor.rc) == (403, "WrongCredentials")
    # The bound key alone (no apikey) is enough for the node.
    key_only = SimWorker(Api(coordinator.url, identity=first_key), "keyed")
    popped = await key_only.pop()
    assert popped.status == 200 and popped.body["ids"]
    assert (await key_only.submit(popped.body["ids"][0], seed_of(popped))).status == 200
    # The bound key cannot pose as another of the owner's nodes.
    other_name = await SimWorker(Api(coordinator.url, identity=first_key), "another-name").pop()
    assert (other_name.status, other_name.rc) == (403, "WrongCredentials")
    # The owner's apikey alone still works (AI Horde-compatible), and its results are unsigned.
    await generate(api, small())
    unsigned = node(coordinator, owner, "keyed", signed=False)
    popped = await pop_job(unsigned)
    assert (await unsigned.submit(popped.body["ids"][0], seed_of(popped))).status == 200


async def test_node_key_of_another_owner_is_refused(coordinator: RunningCoordinator) -> None:
    bob = await coordinator.create_account("bob")
    eve = await coordinator.create_account("eve")
    key = Identity.generate()
    assert (await node(coordinator, bob, "bobs", identity=key).pop()).status == 200
    stolen = await node(coordinator, eve, "eves", identity=key).pop()
    assert (stolen.status, stolen.rc) == (401, "ApikeySignatureMismatch")


async def test_result_signed_by_the_wrong_key_is_refused_and_unpaid(
    coordinator: RunningCoordinator, pair: RequesterAndNode
) -> None:
    alice, api, owner, worker = pair
    request_id = await generate(api, small())
    popped = await pop_job(worker)
    job_id, seed = popped.body["ids"][0], seed_of(popped)
    image = tiny_webp()
    forged = sign_result(
        Identity.generate(), ResultDocument(job_id=job_id, image_sha256=sha256_hex(image), seed=seed, state="ok")
    )
    body = {
        "id": job_id,
        "generation": base64.b64encode(image).decode(),
        "state": "ok",
        "seed": seed,
        "signature": forged,
    }
    refused = await worker.api.post("/v2/generate/submit", body)
    assert (refused.status, refused.rc) == (403, "InvalidResultSignature")
    # A signature over another image (or none at all, from a signed node) is refused the same way.
    body["signature"] = sign_result(
        worker.api.identity, ResultDocument(job_id=job_id, image_sha256=sha256_hex(b"other"), seed=seed, state="ok")
    )
    assert (await worker.api.post("/v2/generate/submit", body)).rc == "InvalidResultSignature"
    del body["signature"]
    assert (await worker.api.post("/v2/generate/submit", body)).rc == "InvalidResultSignature"
    assert await job_state(coordinator, job_id) == "processing"
    assert await balance(coordinator, owner) == 0 and await balance(coordinator, alice) == 100
    # The job is still the node's to finish properly.
    assert (await worker.submit(job_id, seed, image=image)).status == 200
    assert (await api.get(f"/v2/generate/status/{request_id}")).body["done"] is True


async def test_provenance_verifies_from_public_data_only(
    coordinator: RunningCoordinator, pair: RequesterAndNode
) -> None:
    api, worker = pair.api, pair.worker
    request_id = await generate(api, small(n=2))
    popped = await pop_job(worker, amount=2)
    coordinator_key = PublicKey.from_text((await Api(coordinator.url).get("/v2/coordinator")).body["public_key"])
    for index, job_id in enumerate(popped.body["ids"]):
        signed_job = popped.body["jobs"][index]
        assert verify_job(coordinator_key, JobDocument(**signed_job["document"]), signed_job["signature"])
        assert (await worker.submit(job_id, seed_of(popped, index), image=tiny_webp((index, 50, 90)))).status == 200
    status = (await Api(coordinator.url).get(f"/v2/generate/status/{request_id}")).body
    assert len(status["generations"]) == 2
    async with aiohttp.ClientSession() as session:
        for generation in status["generations"]:
            async with session.get(generation["img"]) as response:
                image = await response.read()
            job = JobDocument(**generation["job"])
            assert job.request_sha256 == request_digest(request_id) and job.job_id == generation["id"]
            assert job.payload["seed"] == generation["seed"]
            result = ResultDocument(
                job_id=generation["id"],
                image_sha256=generation["image_sha256"],
                seed=generation["seed"],
                state=generation["state"],
            )
            worker_key = PublicKey.from_text(generation["worker_key"])
            assert worker_key == worker.api.identity.public_key
            assert (
                verify_provenance(
                    image,
                    job,
                    generation["job_signature"],
                    coordinator_key,
                    result,
                    generation["signature"],
                    worker_key,
                )
                == []
            )
            tampered = bytearray(image)
            tampered[len(tampered) // 2] ^= 0x01
            problems = verify_provenance(
                bytes(tampered),
                job,
                generation["job_signature"],
                coordinator_key,
                result,
                generation["signature"],
                worker_key,
            )
            assert problems and "SHA-256" in problems[0]
            forged_job = job.model_copy(update={"model": "something-else"})
            assert verify_provenance(
                image,
                forged_job,
                generation["job_signature"],
                coordinator_key,
                result,
                generation["signature"],
                worker_key,
            )


async def test_provenance_holds_when_the_node_reports_another_seed(
    coordinator: RunningCoordinator, pair: RequesterAndNode
) -> None:
    """The status's `seed` is the one the node reported and signed (as on AI Horde), so the result document
    can be rebuilt from it; the job document still shows the seed the coordinator asked for."""
    api, worker = pair.api, pair.worker
    request_id = await generate(api, small(seed="00042"))
    popped = await pop_job(worker)
    job_id = popped.body["ids"][0]
    image = tiny_webp()
    reported = "7"  # the seed the node says it used, sent as a number
    signature = sign_result(
        worker.api.identity, ResultDocument(job_id=job_id, image_sha256=sha256_hex(image), seed=reported, state="ok")
    )
    body = {
        "id": job_id,
        "generation": base64.b64encode(image).decode(),
        "state": "ok",
        "seed": 7,
        "signature": signature,
    }
    assert (await worker.api.post("/v2/generate/submit", body)).status == 200
    [generation] = (await Api(coordinator.url).get(f"/v2/generate/status/{request_id}")).body["generations"]
    assert generation["seed"] == "7" and generation["job"]["payload"]["seed"] == "42"
    result = ResultDocument(
        job_id=generation["id"],
        image_sha256=generation["image_sha256"],
        seed=generation["seed"],
        state=generation["state"],
    )
    assert (
        verify_provenance(
            image,
            JobDocument(**generation["job"]),
            generation["job_signature"],
            coordinator.public_key,
            result,
            generation["signature"],
            PublicKey.from_text(generation["worker_key"]),
        )
        == []
    )


async def test_apikey_only_worker_results_are_marked_unsigned(coordinator: RunningCoordinator) -> None:
    alice = await coordinator.create_account("alice", kudos=100)
    request_id = await generate(requester(coordinator, alice), small())
    owner = await coordinator.create_account("owner")
    worker = node(coordinator, owner, "plain", signed=False)
    reply = await worker.serve_one()
    assert reply.status == 200 and reply.body["reward"] > 0
    [generation] = (await Api(coordinator.url).get(f"/v2/generate/status/{request_id}")).body["generations"]
    assert generation["signature"] is None and generation["worker_key"] is None
    assert generation["job_signature"]  # the coordinator still signed the job
    assert generation["image_sha256"]


@pytest.mark.parametrize("path", ["/v2/generate/pop", "/v2/generate/submit", "/v2/kudos/transfer"])
async def test_signed_node_and_account_endpoints_reject_tampering(coordinator: RunningCoordinator, path: str) -> None:
    owner = await coordinator.create_account("owner", kudos=10)
    await coordinator.create_account("bob")
    key = Identity.generate()
    assert (await node(coordinator, owner, "n1", identity=key).pop()).status == 200
    body = json.dumps({"name": "n1", "id": "x", "username": "bob", "amount": 1}).encode()
    headers = {"apikey": owner.apikey, **signed_headers(key, coordinator, "POST", path, body)}
    before = await snapshot(coordinator)
    reply = await raw_call(coordinator, "POST", path, body.replace(b"bob", b"bop"), headers)
    assert (reply.status, reply.rc) == (401, "DigestMismatch")
    assert await snapshot(coordinator) == before
