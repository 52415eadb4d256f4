-- What else a waiting job demands of a node (coordinator/capabilities.py): textual inversions, ControlNet,
-- hires fix, an NSFW censor, its sampler, its post-processors and ControlNet type. A pop filters on them
-- with the others.
ALTER TABLE queue ADD COLUMN tis INTEGER NOT NULL DEFAULT 0;
ALTER TABLE queue ADD COLUMN controlnet INTEGER NOT NULL DEFAULT 0;
ALTER TABLE queue ADD COLUMN hires_fix INTEGER NOT NULL DEFAULT 0;
ALTER TABLE queue ADD COLUMN censor INTEGER NOT NULL DEFAULT 0;
ALTER TABLE queue ADD COLUMN sampler TEXT NOT NULL DEFAULT 'k_euler_a';
ALTER TABLE queue ADD COLUMN post_processors INTEGER NOT NULL DEFAULT 0;  -- a bit per post-processor name
ALTER TABLE queue ADD COLUMN control_type TEXT NOT NULL DEFAULT '';
ALTER TABLE queue ADD COLUMN lora_civitai INTEGER NOT NULL DEFAULT 0;
-- Jobs queued before this version: their demands, from the request each belongs to.
UPDATE queue SET
    sampler = lower(COALESCE((r.info::json) -> 'body' -> 'params' ->> 'sampler_name', 'k_euler_a')),
    hires_fix = CASE WHEN (r.info::json) -> 'body' -> 'params' ->> 'hires_fix' = 'true' THEN 1 ELSE 0 END,
    censor = CASE WHEN (r.info::json) -> 'body' ->> 'censor_nsfw' = 'true' THEN 1 ELSE 0 END
FROM requests AS r WHERE r.id = queue.request_id;
