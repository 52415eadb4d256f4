-- Images finished per model per day, for /v2/stats/img/models (`stats` counts per minute, not per model).
CREATE TABLE model_stats (
    day INTEGER NOT NULL,
    model TEXT NOT NULL,
    images INTEGER NOT NULL,
    PRIMARY KEY (day, model)
);
-- Moderators may edit other accounts (PUT /v2/users/{id}); the operator names them
-- (`horde-coordinator moderator NAME`).
ALTER TABLE accounts ADD COLUMN moderator INTEGER NOT NULL DEFAULT 0;
