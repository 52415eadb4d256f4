-- The PostgreSQL twin of migrations/sqlite/006_model_stats_and_moderators.sql.
CREATE TABLE model_stats (
    day INTEGER NOT NULL,
    model TEXT NOT NULL,
    images INTEGER NOT NULL,
    PRIMARY KEY (day, model)
);
ALTER TABLE accounts ADD COLUMN moderator INTEGER NOT NULL DEFAULT 0;
