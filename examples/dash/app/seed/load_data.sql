-- Sample F1 data (a stand-in for `python -m dash.scripts.load_data`). Safe to run again.
CREATE TABLE IF NOT EXISTS f1_race_wins (
    season integer NOT NULL,
    driver text NOT NULL,
    wins integer NOT NULL,
    PRIMARY KEY (season, driver)
);
INSERT INTO f1_race_wins (season, driver, wins) VALUES
    (2021, 'Max Verstappen', 10),
    (2021, 'Lewis Hamilton', 8),
    (2022, 'Max Verstappen', 15),
    (2023, 'Max Verstappen', 19)
ON CONFLICT (season, driver) DO NOTHING;
