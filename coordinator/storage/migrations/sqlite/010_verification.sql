-- Verified work (coordinator/escrow.py, coordinator/verification.py).
-- Escrow: one row per held reward (an image's, or uptime), until its window closes (released) or a
-- check fails (forfeited). The ledger holds the public movements; this table says what is due when.
CREATE TABLE escrow (
    id INTEGER PRIMARY KEY,
    worker_id TEXT NOT NULL,
    owner_id INTEGER NOT NULL,
    job_id TEXT,  -- NULL for uptime
    amount REAL NOT NULL,
    reference TEXT NOT NULL,
    created REAL NOT NULL,
    release_at REAL NOT NULL,
    state TEXT NOT NULL  -- held | released | forfeited
);
CREATE INDEX escrow_due ON escrow (release_at) WHERE state = 'held';
CREATE INDEX escrow_by_worker ON escrow (worker_id, state);
CREATE INDEX escrow_by_owner ON escrow (owner_id, state);
CREATE INDEX escrow_by_job ON escrow (job_id);

-- Spot checks: a check job (of its own request, by the verifier account) re-runs a subject job.
CREATE TABLE checks (
    job_id TEXT PRIMARY KEY,
    subject_job TEXT NOT NULL,
    round INTEGER NOT NULL,  -- 1: a second node; 2: a third, after the first two disagreed
    state TEXT NOT NULL,  -- pending | done
    created REAL NOT NULL,
    info TEXT NOT NULL
);
CREATE INDEX checks_by_subject ON checks (subject_job);

-- Verdicts: what a check concluded about one node's image, signed by the coordinator.
CREATE TABLE verdicts (
    id INTEGER PRIMARY KEY,
    job_id TEXT NOT NULL,
    worker_id TEXT NOT NULL,
    outcome TEXT NOT NULL,  -- pass | fail
    created REAL NOT NULL,
    info TEXT NOT NULL
);
CREATE INDEX verdicts_by_job ON verdicts (job_id);
CREATE INDEX verdicts_by_worker ON verdicts (worker_id);

-- Canaries' reference set: images made by trusted nodes, whose jobs are queued again as known-answer jobs.
CREATE TABLE canaries (
    job_id TEXT PRIMARY KEY,
    created REAL NOT NULL
);
