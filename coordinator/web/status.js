// The status page: reads the coordinator's public API (the same answers everyone gets) every few
// seconds, and checks signatures and the ledger's chain here, in the browser (verify.js).
"use strict";

const API = "/api/v2";
const REFRESH_MS = 5000;
const LEDGER_SHOWN = 12;
const LEDGER_VERIFY_MAX = 50000; // past this many entries only the latest page's links are checked
const GENESIS = "0".repeat(64);
const PROVENANCE = { "X-Horde-Provenance": "1" }; // ask for our signature fields (protocol/extensions.py)
let coordinatorKey = null;
const charts = {};

async function getJson(path, headers = {}) {
  const response = await fetch(API + path, { headers: { Accept: "application/json", ...headers } });
  const body = await response.json();
  if (!response.ok) throw new Error(`${body.message || response.statusText} (${body.rc || response.status})`);
  return body;
}

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

function fillTable(id, rows) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren(...rows.map((values) => {
    const tr = document.createElement("tr");
    tr.append(...values.map(cell));
    return tr;
  }));
  const empty = document.getElementById(`${id}-empty`);
  if (empty) empty.hidden = rows.length > 0;
}

function seconds(value) {
  if (value < 60) return `${value} s`;
  if (value < 3600) return `${Math.round(value / 60)} min`;
  return `${(value / 3600).toFixed(1)} h`;
}

async function showCoordinator() {
  const info = await getJson("/coordinator");
  coordinatorKey = info.public_key;
  document.getElementById("coordinator-key").textContent = info.public_key;
  document.getElementById("coordinator-version").textContent = `v${info.version}`;
}

async function showNodes() {
  const workers = await getJson("/workers");
  const online = workers.filter((w) => w.online);
  fillTable("nodes", online.map((w) => [w.name, w.performance, String(w.requests_fulfilled), w.models.join(", ")]));
}

async function showModels() {
  const models = await getJson("/status/models");
  fillTable("models", models.map((m) => [m.name, String(m.count), String(m.jobs), m.queued.toFixed(2), seconds(m.eta)]));
}

// --- throughput and faults --------------------------------------------------------------------------
function series(history, buckets, minutesPerBucket) {
  const end = history.now_minute + 1;
  const start = end - buckets * minutesPerBucket;
  const times = [], images = new Array(buckets).fill(0), faults = new Array(buckets).fill(0);
  for (let i = 0; i < buckets; i++) times.push((start + i * minutesPerBucket) * 60);
  for (const m of history.minutes) {
    const i = Math.floor((m.minute - start) / minutesPerBucket);
    if (i >= 0 && i < buckets) { images[i] += m.images; faults[i] += m.faults; }
  }
  return [times, images, faults];
}

function drawChart(id, data) {
  const target = document.getElementById(id);
  if (charts[id]) { charts[id].setData(data); return; }
  charts[id] = new uPlot({
    width: 540, height: 220,
    series: [{}, { label: "images", stroke: "#2563eb", width: 2 }, { label: "faults", stroke: "#b3261e", width: 2 }],
    axes: [{}, { label: "count" }],
  }, data, target);
}

async function showThroughput() {
  const history = await getJson("/status/history");
  for (const [id, buckets, size, totals] of [["chart-hour", 60, 1, "totals-hour"], ["chart-day", 24, 60, "totals-day"]]) {
    const data = series(history, buckets, size);
    drawChart(id, data);
    const sum = (values) => values.reduce((a, b) => a + b, 0);
    document.getElementById(totals).textContent = `${sum(data[1])} images, ${sum(data[2])} faults`;
  }
}

// --- ledger ---------------------------------------------------------------------------------------
async function ledgerEntries(headSeq) {
  const entries = [];
  let after = headSeq > LEDGER_VERIFY_MAX ? headSeq - 1000 : 0;
  while (after < headSeq) {
    const page = await getJson(`/ledger?after=${after}&limit=1000`);
    entries.push(...page.entries.filter((e) => e.seq <= headSeq));
    if (page.next_after === null || page.entries.length === 0) break;
    after = page.next_after;
  }
  return entries;
}

async function showLedger() {
  const head = await getJson("/ledger/head");
  const entries = await ledgerEntries(head.seq);
  const status = document.getElementById("ledger-status");
  document.getElementById("ledger-head").textContent = `seq ${head.seq} · ${head.hash}`;
  const signed = await HordeVerify.head(head, coordinatorKey);
  const whole = entries.length > 0 && entries[0].seq === 1;
  const chain = await HordeVerify.chain(entries, whole ? GENESIS : (entries[0] || {}).prev_hash);
  const last = entries.length ? entries[entries.length - 1].hash : GENESIS;
  let problem = null;
  if (!signed) problem = "the head's signature does not verify with the coordinator's key";
  else if (!chain.ok) problem = chain.problem;
  else if (last !== head.hash) problem = "the signed head is not the last entry";
  status.dataset.state = problem ? "failed" : "ok";
  status.textContent = problem ? `does not verify: ${problem}` :
    `chain verifies (${entries.length} ${whole ? "entries from the start" : "latest entries"}), head signed`;
  fillTable("ledger", entries.slice(-LEDGER_SHOWN).reverse().map((e) => [
    String(e.seq), e.kind, e.source === null ? "—" : String(e.source), e.target === null ? "—" : String(e.target),
    e.amount.toFixed(2), e.reference, e.hash.slice(0, 16) + "…",
  ]));
}

// --- image check ----------------------------------------------------------------------------------
function report(lines, ok) {
  const result = document.getElementById("check-result");
  result.dataset.state = ok ? "ok" : "failed";
  const list = document.createElement("ul");
  list.append(...lines.map((line) => { const li = document.createElement("li"); li.textContent = line; return li; }));
  result.replaceChildren(list);
}

function describe(label, checked) {
  const lines = [
    `${label}: ${checked.ok ? "VERIFIED" : "NOT VERIFIED"}`,
    `job signature by the coordinator: ${checked.jobOk ? "valid" : "INVALID"}`,
    `image signature by the node: ${checked.resultOk ? "valid" : "INVALID"}`,
  ];
  return lines.concat(checked.problems.map((p) => `problem: ${p}`));
}

async function imageBytes(img) {
  if (/^(https?:)?\//.test(img)) {
    const response = await fetch(img);
    if (!response.ok) throw new Error(`the image could not be fetched (HTTP ${response.status})`);
    return new Uint8Array(await response.arrayBuffer());
  }
  return Uint8Array.from(atob(img), (c) => c.charCodeAt(0));
}

async function checkRequest(requestId) {
  const status = await getJson(`/generate/status/${encodeURIComponent(requestId)}`, PROVENANCE);
  if (!status.generations.length) { report(["this request has no finished image yet"], false); return; }
  let lines = [], allOk = true;
  for (const g of status.generations) {
    const checked = await HordeVerify.provenance({
      image: await imageBytes(g.img), job: g.job, jobSignature: g.job_signature, coordinatorKey,
      result: { job_id: g.id, image_sha256: g.image_sha256, seed: g.seed, state: g.state },
      resultSignature: g.signature, workerKey: g.worker_key, requestId,
    });
    allOk = allOk && checked.ok;
    lines = lines.concat(describe(`image of job ${g.id} by node ${g.worker_name} (${g.worker_id})`, checked));
  }
  report(lines, allOk);
}

async function checkFiles(files) {
  const sidecarFile = files.find((f) => f.name.endsWith(".json"));
  const imageFile = files.find((f) => !f.name.endsWith(".json"));
  if (!sidecarFile || !imageFile) { report(["drop both the image and its .json sidecar"], false); return; }
  const sidecar = JSON.parse(await sidecarFile.text());
  const checked = await HordeVerify.provenance({
    image: new Uint8Array(await imageFile.arrayBuffer()), job: sidecar.job.document,
    jobSignature: sidecar.job.signature, coordinatorKey, result: sidecar.result.document,
    resultSignature: sidecar.result.signature, workerKey: sidecar.node.public_key, requestId: sidecar.request_id,
  });
  const node = sidecar.node.worker_name || sidecar.node.worker_id;
  report(describe(`${imageFile.name}, job ${sidecar.job.document.job_id} by node ${node}`, checked), checked.ok);
}

function guarded(action) {
  return async (...args) => {
    try { await action(...args); } catch (error) { report([`check failed: ${error.message}`], false); }
  };
}

function wireImageCheck() {
  document.getElementById("check-form").addEventListener("submit", (event) => {
    event.preventDefault();
    guarded(checkRequest)(document.getElementById("check-id").value.trim());
  });
  document.getElementById("check-files").addEventListener("change", (event) => {
    guarded(checkFiles)(Array.from(event.target.files));
  });
  const drop = document.getElementById("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    guarded(checkFiles)(Array.from(event.dataTransfer.files));
  });
}

// --- refresh --------------------------------------------------------------------------------------
async function refresh() {
  const panels = [showNodes, showModels, showThroughput, showLedger];
  const results = await Promise.allSettled(panels.map((show) => show()));
  for (const result of results) {
    if (result.status === "rejected") console.warn("a panel could not be refreshed:", result.reason);
  }
  document.getElementById("updated").textContent = new Date().toLocaleTimeString();
}

async function start() {
  wireImageCheck();
  await showCoordinator();
  await refresh();
  setInterval(refresh, REFRESH_MS);
}

start();
