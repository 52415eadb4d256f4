-- The workers whose automatic maintenance has run out (Tx.maintenance_over_ids), found without reading
-- every worker: upkeep asks every few seconds, and a scan of 10,000 nodes' JSON was O(nodes) each time.
-- Only workers in maintenance are in the index, so it stays as small as they are few.
CREATE INDEX workers_maintenance_until ON workers (((info::jsonb ->> 'maintenance_until')::double precision))
    WHERE (info::jsonb ->> 'maintenance')::boolean;
