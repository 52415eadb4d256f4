-- PostgreSQL only: signed-request nonces seen by any coordinator process, so a request
-- signed for one process cannot be replayed to another (SQLite has one process, whose
-- in-memory NonceCache is enough).
-- UNLOGGED: no WAL, so recording a nonce costs no disk flush. A server crash empties the
-- table, which only reopens replays of requests signed in the few minutes before it.
CREATE UNLOGGED TABLE signature_nonces (
    signer TEXT NOT NULL,
    nonce TEXT NOT NULL,
    seen DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (signer, nonce)
);
CREATE INDEX signature_nonces_by_age ON signature_nonces (seen);
