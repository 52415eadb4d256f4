// Offline checks in the browser, the same rules as protocol/: RFC 8785 canonical JSON, SHA-256, and
// Ed25519 through WebCrypto (which needs a secure context: HTTPS, or a loopback address).
"use strict";

const HordeVerify = (() => {
  const encoder = new TextEncoder();

  // RFC 8785: keys sorted by UTF-16 code units (JavaScript's default sort), numbers and strings as
  // ECMAScript's JSON.stringify writes them; the rule protocol/canonical.py follows.
  function canonical(value) {
    if (value === null || typeof value !== "object") return JSON.stringify(value);
    if (Array.isArray(value)) return "[" + value.map(canonical).join(",") + "]";
    const keys = Object.keys(value).filter((k) => value[k] !== undefined).sort();
    return "{" + keys.map((k) => JSON.stringify(k) + ":" + canonical(value[k])).join(",") + "}";
  }

  function hex(buffer) {
    return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");
  }

  async function sha256Hex(bytes) {
    return hex(await crypto.subtle.digest("SHA-256", bytes));
  }

  function b64urlDecode(text) {
    const b64 = text.replace(/-/g, "+").replace(/_/g, "/");
    const raw = atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4));
    return Uint8Array.from(raw, (c) => c.charCodeAt(0));
  }

  // A key's one text form is "ed25519:<base64url of the 32 raw bytes>" (protocol/keys.py).
  async function verifyEd25519(keyText, signatureText, message) {
    try {
      if (!keyText || !signatureText || !keyText.startsWith("ed25519:")) return false;
      const raw = b64urlDecode(keyText.slice("ed25519:".length));
      const key = await crypto.subtle.importKey("raw", raw, { name: "Ed25519" }, false, ["verify"]);
      return await crypto.subtle.verify({ name: "Ed25519" }, key, b64urlDecode(signatureText), message);
    } catch (error) {
      return false;
    }
  }

  // protocol/provenance.py: the coordinator signed the job document, the node the result document
  // (job id, image hash, seed, state); the image must be the one the result names.
  async function provenance({ image, job, jobSignature, coordinatorKey, result, resultSignature, workerKey,
                              requestId }) {
    const problems = [];
    const jobOk = await verifyEd25519(coordinatorKey, jobSignature, encoder.encode(canonical(job)));
    if (!jobOk) problems.push(`the job signature does not verify with coordinator key ${coordinatorKey}`);
    const resultOk = await verifyEd25519(workerKey, resultSignature, encoder.encode(canonical(result)));
    if (!resultOk) problems.push(`the node's signature does not verify with its key ${workerKey}`);
    if (!job || !result || result.job_id !== job.job_id) problems.push("the result is for another job");
    const actual = await sha256Hex(image);
    if (!result || result.image_sha256 !== actual) {
      problems.push(`the image's SHA-256 is ${actual}, the node attested ${result && result.image_sha256}`);
    }
    if (requestId && job && job.request_sha256 !== (await sha256Hex(encoder.encode(requestId)))) {
      problems.push("the job was not made for this request");
    }
    return { ok: problems.length === 0, jobOk, resultOk, problems };
  }

  // protocol/ledger.py: each entry's hash is SHA-256 of its canonical fields, prev_hash the one before;
  // the head is the coordinator's signature over {seq, hash, created, coordinator_key}.
  async function entryHash(entry) {
    const fields = {
      seq: entry.seq, created: entry.created, kind: entry.kind, source: entry.source, target: entry.target,
      amount: entry.amount, reference: entry.reference, prev_hash: entry.prev_hash,
    };
    return sha256Hex(encoder.encode(canonical(fields)));
  }

  async function chain(entries, firstPrevHash) {
    let previous = firstPrevHash;
    for (const entry of entries) {
      if (entry.prev_hash !== previous) return { ok: false, problem: `entry ${entry.seq} does not follow the one before` };
      if ((await entryHash(entry)) !== entry.hash) return { ok: false, problem: `entry ${entry.seq} was altered` };
      previous = entry.hash;
    }
    return { ok: true, last: previous };
  }

  async function head(headDoc, expectedKey) {
    const message = encoder.encode(canonical({
      seq: headDoc.seq, hash: headDoc.hash, created: headDoc.created, coordinator_key: headDoc.coordinator_key,
    }));
    const keyOk = !expectedKey || headDoc.coordinator_key === expectedKey;
    return keyOk && (await verifyEd25519(headDoc.coordinator_key, headDoc.signature, message));
  }

  return { canonical, sha256Hex, b64urlDecode, verifyEd25519, provenance, chain, head };
})();
