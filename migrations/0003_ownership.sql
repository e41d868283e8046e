-- trio-sessions schema, version 3: several processes on one database.
--
-- Each runtime holds a lease in `instances`; each session row names the
-- instance that owns it and an epoch (the fencing token) that grows at every
-- change of owner. A flush writes a session only while the row still names
-- the writer and the epoch it applied the change under (see
-- trio_sessions._ownership). Existing rows have no owner: the first runtime
-- to activate one takes it.

-- One row per runtime that ever ran. Judged in database time: an instance is
-- live while `left_at` is NULL and `lease_until` is in the future. A lapsed
-- lease is final: that instance never renews it and rejoins under a new id.
-- Replicated (a reference table) on a distributed PostgreSQL: it is small and
-- every acquire reads it.
CREATE TABLE instances (
    id           uuid        PRIMARY KEY,
    started_at   timestamptz NOT NULL,
    renewed_at   timestamptz NOT NULL,
    lease_until  timestamptz NOT NULL,
    left_at      timestamptz,
    -- Where it runs, for an operator reading the table.
    host         text        NOT NULL,
    pid          integer     NOT NULL
);

-- NULL: nobody owns it (written before version 3). `owner_epoch` counts the
-- changes of owner; a new session starts at 1.
ALTER TABLE sessions ADD COLUMN owner uuid, ADD COLUMN owner_epoch bigint NOT NULL DEFAULT 0;

-- A runtime asking the owner of a session to hand it over (one request per
-- session, the newest wins). The owner polls its requests (and is woken by
-- NOTIFY); the grant deletes the row in the transaction that moves the owner.
-- Distributed by `session_id`, co-located with `sessions`.
CREATE TABLE session_handoffs (
    session_id    uuid        PRIMARY KEY,
    owner         uuid        NOT NULL,
    requester     uuid        NOT NULL,
    requested_at  timestamptz NOT NULL
);
CREATE INDEX session_handoffs_owner_idx ON session_handoffs (owner);
