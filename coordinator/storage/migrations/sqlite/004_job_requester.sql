-- Each job names its requester ("account:ID" or "ip:ADDRESS") and the kudos reserved for it at
-- submit (its price when the requester's available balance funded it, else 0). A requester's
-- unfinished jobs are at once its queue load (the concurrency cap) and its reserved kudos.
ALTER TABLE jobs ADD COLUMN requester TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN charge REAL NOT NULL DEFAULT 0;
CREATE INDEX jobs_by_requester ON jobs (requester, state);
