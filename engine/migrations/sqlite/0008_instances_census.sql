-- `/metrics` counts instances per procedure, status and outcome on every
-- scrape. Without an index holding all three, that GROUP BY read every
-- instance row, state included: 7 s and 2 GB of reads per scrape with a
-- million instances. This index answers it alone (0.24 s at a million).
CREATE INDEX instances_census ON instances (code, status, outcome);
