-- Faults per minute (a node reported one, or missed its time limit), for the status page's history.
CREATE TABLE fault_stats (
    minute INTEGER PRIMARY KEY,
    faults INTEGER NOT NULL
);
