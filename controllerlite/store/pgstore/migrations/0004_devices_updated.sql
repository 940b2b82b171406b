-- The records changed since a time, read by instances that share the
-- database (LoadChanged) instead of every row at every refresh.
CREATE INDEX devices_updated ON devices (updated_at);
