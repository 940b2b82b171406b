-- The controller instances sharing this database (package
-- controllerlite/lease): each renews its row's lease with the database's
-- clock; the live instances are the rows not yet expired, and each device
-- belongs to one of them (rendezvous hashing of its id over their names).
CREATE TABLE controllers (
    name       text PRIMARY KEY,
    expires_at timestamptz NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now()
);
