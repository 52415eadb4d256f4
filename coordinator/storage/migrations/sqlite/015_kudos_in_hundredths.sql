-- The cached balance as a whole number of hundredths, the unit the ledger counts in (protocol/ledger.py),
-- so it is updated by integer addition and compared exactly, with no float in between.
ALTER TABLE accounts ADD COLUMN kudos_hundredths INTEGER NOT NULL DEFAULT 0;
-- The float column held the float nearest to an exact hundredth, so ×100 is within a hair of an integer
-- and ROUND recovers it exactly.
UPDATE accounts SET kudos_hundredths = CAST(ROUND(kudos * 100) AS INTEGER);
ALTER TABLE accounts DROP COLUMN kudos;
