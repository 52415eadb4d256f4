-- The jobs a node has in hand: a pop's deadlines count the ones queued before them on that node
-- (coordinator/dispatch.py), one indexed count per claim.
CREATE INDEX jobs_held_by_worker ON jobs (worker_id) WHERE state = 'processing';
