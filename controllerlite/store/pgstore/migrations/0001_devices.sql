-- The controller's record of each device, as store.Device: the replica
-- (clock, properties with their write stamps, the newest writer), whether
-- a Command is owed to the broker, and the latest status, time seen,
-- telemetry and alerts. Telemetry history stays in the data directory
-- (history.db).
CREATE TABLE devices (
    id         text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    -- The controller's clock for the device, [c, d] of PROTOCOL.md.
    vc_c       bigint NOT NULL CHECK (vc_c >= 0),
    vc_d       bigint NOT NULL CHECK (vc_d >= 0),
    -- Property name to {"val": value, "w": [c, d]}.
    props      jsonb NOT NULL DEFAULT '{}',
    src        text NOT NULL DEFAULT '',
    owed       boolean NOT NULL DEFAULT false,
    online     boolean NOT NULL DEFAULT false,
    last_seen  timestamptz,
    -- The latest telemetry payload as received (json keeps its text).
    telemetry  json,
    reported   jsonb,
    raised     jsonb,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The Commands still owed, read after a restart or a reconnect.
CREATE INDEX devices_owed ON devices (id) WHERE owed;
