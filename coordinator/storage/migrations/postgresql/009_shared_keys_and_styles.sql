-- The PostgreSQL twin of migrations/sqlite/009_shared_keys_and_styles.sql (REAL as DOUBLE PRECISION).
-- Shared keys (/v2/sharedkeys): an apikey that spends its owner's kudos within the key's limits. The key
-- itself is never stored, only its keyed hash, like an apikey's. `utilized` counts the kudos its delivered
-- images were charged; what its unfinished images reserve is read from their jobs (Tx.requester_load's rule).
CREATE TABLE shared_keys (
    key_hash TEXT PRIMARY KEY,
    owner_id INTEGER NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    utilized DOUBLE PRECISION NOT NULL DEFAULT 0,
    info TEXT NOT NULL  -- JSON: name, kudos limit, expiry, per-image limits
);
CREATE INDEX shared_keys_by_owner ON shared_keys (owner_id);
-- The shared key a request spends through (its hash), so the key's reservations are its requests' jobs.
ALTER TABLE requests ADD COLUMN sharedkey TEXT;
CREATE INDEX requests_by_sharedkey ON requests (sharedkey, state) WHERE sharedkey IS NOT NULL;
-- Styles (/v2/styles/image): a prompt template and parameters a request names with `style`.
CREATE TABLE styles (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    owner_id INTEGER NOT NULL,
    public INTEGER NOT NULL,
    use_count INTEGER NOT NULL DEFAULT 0,
    created DOUBLE PRECISION NOT NULL,
    updated DOUBLE PRECISION NOT NULL,
    info TEXT NOT NULL  -- JSON: the rest of the style
);
CREATE UNIQUE INDEX styles_by_name ON styles (lower(name));
CREATE INDEX styles_by_owner ON styles (owner_id);
