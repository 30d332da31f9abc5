-- Trips, summarised from the telemetry stream.
CREATE TABLE trips (
    id          bigserial PRIMARY KEY,
    vehicle_id  bigint NOT NULL REFERENCES vehicles (id),
    started_at  timestamptz NOT NULL,
    ended_at    timestamptz,
    distance_km numeric(10, 2)
);
CREATE INDEX trips_vehicle_started ON trips (vehicle_id, started_at);
