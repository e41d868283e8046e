-- trio-sessions schema, version 1.
--
-- Applied by trio_sessions._postgres in one transaction, under the advisory
-- lock of trio_sessions._migrations.MIGRATION_LOCK_KEY, and recorded in
-- schema_migrations. Never edit an applied file: add 0002_*.sql instead.

-- One row per session: one column per field of trio_sessions._model.Session.
-- The runtime writes whole rows, guarded by `version` (an upsert applies only
-- when its version is newer than the stored one).
CREATE TABLE sessions (
    id             uuid             PRIMARY KEY,
    user_id        text             NOT NULL,
    agent          text             NOT NULL,
    chat_id        text,
    title          text,
    state          text             NOT NULL,
    metadata       jsonb            NOT NULL,
    -- [{"text": "...", "created_at": "<ISO-8601 UTC>"}, ...], oldest first.
    notes          jsonb            NOT NULL,
    is_active      boolean          NOT NULL,
    message_count  integer          NOT NULL,
    created_at     timestamptz      NOT NULL,
    updated_at     timestamptz      NOT NULL,
    last_activity  timestamptz      NOT NULL,
    expires_at     timestamptz      NOT NULL,
    ended_at       timestamptz,
    end_reason     text,
    version        bigint           NOT NULL,
    -- Sliding expiration in seconds.
    timeout        double precision NOT NULL
);

-- list(user_id=...) in list order, and get(..., user_id=...).
CREATE INDEX sessions_user_idx ON sessions (user_id, created_at DESC, id DESC);

-- list(chat_id=...): most sessions have no chat, so index only those that do.
CREATE INDEX sessions_chat_idx ON sessions (chat_id, created_at DESC, id DESC)
    WHERE chat_id IS NOT NULL;

-- list() without a user or chat filter, in list order (keyset pagination).
CREATE INDEX sessions_list_idx ON sessions (created_at DESC, id DESC);

-- live_deadlines() at start: only live sessions have a deadline that matters.
CREATE INDEX sessions_live_expiry_idx ON sessions (expires_at) WHERE is_active;

-- Every message of every session, append-only. No foreign key to sessions:
-- the store contract (shared with MemoryStore) accepts messages whose row is
-- not stored, a hard delete removes messages explicitly in the same
-- transaction as the row, and appends skip a per-row key check.
CREATE TABLE session_messages (
    session_id  uuid        NOT NULL,
    seq         integer     NOT NULL,
    role        text        NOT NULL,
    content     text        NOT NULL,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (session_id, seq)
);
