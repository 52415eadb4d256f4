-- Accounts hold identities; `kudos` is a cache of the ledger, written only with a ledger entry.
CREATE TABLE accounts (
    id INTEGER PRIMARY KEY,
    username TEXT NOT NULL UNIQUE COLLATE NOCASE,
    apikey_hash TEXT NOT NULL UNIQUE,
    public_key TEXT UNIQUE,
    kudos REAL NOT NULL DEFAULT 0,
    trusted INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);

-- Append-only: rows are never updated or deleted; each hash chains to the previous entry.
CREATE TABLE ledger (
    seq INTEGER PRIMARY KEY,
    created REAL NOT NULL,
    kind TEXT NOT NULL,
    source INTEGER,
    target INTEGER,
    amount REAL NOT NULL,
    reference TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);

CREATE TABLE transfers (
    source INTEGER NOT NULL,
    idempotency_key TEXT NOT NULL,
    ledger_seq INTEGER NOT NULL,
    amount REAL NOT NULL,
    PRIMARY KEY (source, idempotency_key)
);

CREATE TABLE workers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE COLLATE NOCASE,
    owner_id INTEGER NOT NULL REFERENCES accounts(id),
    public_key TEXT UNIQUE,
    info TEXT NOT NULL  -- JSON of the remaining Worker fields
);

CREATE TABLE requests (
    id TEXT PRIMARY KEY,
    account_id INTEGER NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    state TEXT NOT NULL,
    info TEXT NOT NULL  -- JSON of the remaining RequestRecord fields
);
CREATE INDEX requests_by_state ON requests (state, updated);

CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    state TEXT NOT NULL,
    worker_id TEXT,
    deadline REAL,
    info TEXT NOT NULL  -- JSON of the remaining JobRecord fields
);
CREATE INDEX jobs_by_request ON jobs (request_id, idx);
CREATE INDEX jobs_in_flight ON jobs (deadline) WHERE state = 'processing';

-- One row per (waiting job, model it may run on); model '' means any model.
-- Pop walks (model, tier, rank) from the top, so its cost grows with the log of the queue.
CREATE TABLE queue (
    job_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    model TEXT NOT NULL,
    tier INTEGER NOT NULL,
    rank REAL NOT NULL,
    pixels INTEGER NOT NULL,
    steps INTEGER NOT NULL,  -- pixels × steps is the job's work, for the queue's figures
    nsfw INTEGER NOT NULL,
    img2img INTEGER NOT NULL,
    painting INTEGER NOT NULL,
    lora INTEGER NOT NULL,
    post_processing INTEGER NOT NULL,
    trusted_only INTEGER NOT NULL,
    workers TEXT,  -- JSON list of worker ids/names, or NULL for any
    worker_blacklist INTEGER NOT NULL,
    PRIMARY KEY (job_id, model)
);
CREATE INDEX queue_by_model ON queue (model, tier DESC, rank DESC);
CREATE INDEX queue_by_priority ON queue (tier DESC, rank DESC);
CREATE INDEX queue_by_request ON queue (request_id);

-- Images and megapixel-steps finished per minute, for /v2/stats/img/totals.
CREATE TABLE stats (
    minute INTEGER PRIMARY KEY,
    images INTEGER NOT NULL,
    ps REAL NOT NULL
);
