-- The telemetry history (package controllerlite/history, docs/history.md)
-- when the store is PostgreSQL, so every instance answers every device's
-- history. Values are the history package's encodings (a raw sample: a
-- flags byte and two 16-bit hundredths; a bucket: varints), so the rules
-- stay in one place and a year of one device stays small.

-- One row per device with history: how far (unix s) its samples have been
-- folded into buckets. A compaction holds the row while it works on the
-- device, so instances never compact one device twice.
CREATE TABLE history_devices (
    device    text PRIMARY KEY,
    compacted bigint NOT NULL DEFAULT 0
);

-- Samples at full resolution, the last 48 hours: time in unix ms.
CREATE TABLE history_raw (
    device text   NOT NULL,
    ms     bigint NOT NULL,
    v      bytea  NOT NULL,
    PRIMARY KEY (device, ms)
);

-- 15-minute buckets, 400 days: start in unix s.
CREATE TABLE history_buckets (
    device text   NOT NULL,
    t      bigint NOT NULL,
    v      bytea  NOT NULL,
    PRIMARY KEY (device, t)
);
