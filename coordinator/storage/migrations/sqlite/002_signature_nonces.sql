-- Signed-request nonces, the same table as PostgreSQL's, so that a request accepted before a
-- restart is refused as a replay after it (Database.first_use; kept for twice the clock window).
-- WITHOUT ROWID: the primary key is the table, so recording a nonce writes one b-tree and the
-- age index, not three.
CREATE TABLE signature_nonces (
    signer TEXT NOT NULL,
    nonce TEXT NOT NULL,
    seen REAL NOT NULL,
    PRIMARY KEY (signer, nonce)
) WITHOUT ROWID;
CREATE INDEX signature_nonces_by_age ON signature_nonces (seen);
