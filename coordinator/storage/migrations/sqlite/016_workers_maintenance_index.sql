-- The workers whose automatic maintenance has run out (Tx.maintenance_over_ids), found without reading
-- every worker: upkeep asks every few seconds, and a scan of 10,000 nodes' JSON held the loop 30-50 ms.
-- Only workers in maintenance are in the index, so it stays as small as they are few.
CREATE INDEX workers_maintenance_until ON workers (json_extract(info, '$.maintenance_until'))
    WHERE json_extract(info, '$.maintenance');
