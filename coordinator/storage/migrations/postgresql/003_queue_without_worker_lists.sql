-- A queue row no longer copies the request's worker list (up to 20 names, for every image × model
-- row): it carries a flag, and a pop reads the list from the request it loads anyway. One request's
-- rows then cost a bounded number of bytes whatever its list (docs/security.md, "Bounds").
ALTER TABLE queue ADD COLUMN named INTEGER NOT NULL DEFAULT 0;  -- 1: only (or, with worker_blacklist, never) the request's workers
UPDATE queue SET named = 1 WHERE workers IS NOT NULL;
ALTER TABLE queue DROP COLUMN workers;
