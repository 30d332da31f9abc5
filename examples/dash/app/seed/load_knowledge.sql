-- Knowledge the agent starts with (a stand-in for `python -m dash.scripts.load_knowledge`).
CREATE TABLE IF NOT EXISTS dash_knowledge (
    name text PRIMARY KEY,
    body text NOT NULL
);
INSERT INTO dash_knowledge (name, body) VALUES
    ('f1_race_wins', 'Race wins per driver and season; one row per (season, driver).')
ON CONFLICT (name) DO NOTHING;
