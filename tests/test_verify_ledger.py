"""Verdicts on the public ledger (issue 17): each verdict, pass or fail, is a `verdict` entry of the hash chain,
moving nothing, whose reference names the job, the node, the outcome and the SHA-256 of the signed verdict
document, so the ledger alone is a node's verified record and an edited verdict entry breaks the chain.
Real coordinator over real HTTP, real tiny-pipeline nodes; the ledger is checked as `horde ledger verify`
checks it (downloaded, against the signed head) and by the coordinator's `audit`."""

from pathlib import Path

import pytest

from client.api import HordeClient
from client.verify import check_ledger
from protocol.keys import PublicKey
from protocol.verdicts import verdict_reference
from tests.api_support import generate, small
from tests.verify_support import audit_ok, network

pytestmark = pytest.mark.usefixtures("one_torch_thread")


async def test_a_pass_and_a_fail_are_ledger_entries_and_an_edit_is_caught(
    tmp_path: Path, database_url: str | None, tiny_model_dir: Path
) -> None:
    async with network(tmp_path, database_url, tiny_model_dir, "seed") as net:
        await generate(net.payer, small(steps=8, seed="31"))
        await net.serve("cheater", "f32", "bf16")  # another seed's image; f32 disagrees; bf16 decides
        assert await net.verdicts() == {"cheater": ["fail"], "f32": ["pass"], "bf16": ["pass"]}

        async with HordeClient(net.coordinator.url) as client:
            entries = [entry async for entry in client.ledger()]
            head = await client.ledger_head()
            assert check_ledger(entries, head, PublicKey.from_text(head.coordinator_key)).ok
            verdicts = [entry for entry in entries if entry.kind == "verdict"]
            signed = [
                next(v.document for v in (await client.image_checks(job)).verdicts if v.document.worker_id == worker)
                for job, worker in (entry.reference.split(":")[1:3] for entry in verdicts)
            ]
        assert [(d.worker_name, d.outcome) for d in signed] == [("cheater", "fail"), ("f32", "pass"), ("bf16", "pass")]
        for entry, document in zip(verdicts, signed, strict=True):
            assert entry.amount == 0 and entry.source is None  # moves nothing
            assert entry.target == net.owners[document.worker_name].id  # on the node's owner's own ledger
            assert entry.reference == verdict_reference(document)  # job, node, outcome, the document's hash
        await audit_ok(net.coordinator)

        fail = verdicts[0]
        async with net.coordinator.broker.services.database.transaction() as tx:  # the fail rewritten as a pass
            await tx.driver.execute(
                "UPDATE ledger SET reference = ? WHERE seq = ?", (fail.reference.replace(":fail:", ":pass:"), fail.seq)
            )
        report = await net.coordinator.broker.bank.audit()
        assert not report.ok and f"seq {fail.seq}" in report.problems[0], report.problems
