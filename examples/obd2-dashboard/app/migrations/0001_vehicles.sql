-- Vehicles known to the dashboard (one per OBD2 adapter).
CREATE TABLE vehicles (
    id         bigserial PRIMARY KEY,
    vin        text NOT NULL UNIQUE,
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
