-- The free check on every image (coordinator/verification.py, docs/security.md "Verified work"): each delivered
-- txt2img image's decoded-pixel hash and its recipe (the hash of its model, prompt and seed). An image whose
-- pixels equal an earlier image of another recipe is a cached image: found by one indexed lookup.
CREATE TABLE image_prints (
    job_id TEXT PRIMARY KEY,
    pixels_sha256 TEXT NOT NULL,
    recipe TEXT NOT NULL,
    worker_id TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX image_prints_by_pixels ON image_prints (pixels_sha256);
-- Open checks, for the upkeep loop's look for those whose job will never come back.
CREATE INDEX checks_pending ON checks (state) WHERE state = 'pending';
