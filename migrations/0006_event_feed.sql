-- trio-sessions schema, version 6: the durable event feed.
--
-- One row per event of a session's change (created, updated, ended, expired,
-- deleted), inserted by the write that commits the change: the same
-- transaction, under the same owner/epoch fence (trio_sessions._feed).
--
-- Position. `id` comes from a sequence, so it is not in commit order: of two
-- transactions writing at once, the one holding the lower ids may commit
-- later. `xid` is the writing transaction's id; a reader returns only events
-- whose `xid` is below the xmin of its own snapshot (no transaction below it
-- is still running, and none can start there), and orders them by
-- `(xid, id)`. The set of events below a reader's xmin is final, so a cursor
-- `(xid, id)` never passes an event that commits later. The primary key is
-- the position: reads and pruning walk it.
CREATE TABLE session_events (
    xid         xid8        NOT NULL DEFAULT pg_current_xact_id(),
    id          bigint      GENERATED ALWAYS AS IDENTITY,
    -- The database's time: the start of the writing transaction.
    at          timestamptz NOT NULL DEFAULT now(),
    kind        text        NOT NULL,
    session_id  uuid        NOT NULL,
    version     bigint      NOT NULL,
    user_id     text        NOT NULL,
    agent       text        NOT NULL,
    chat_id     text,
    state       text        NOT NULL,
    is_active   boolean     NOT NULL,
    end_reason  text,
    PRIMARY KEY (xid, id)
);

-- A lifecycle event (created, ended, expired, deleted) is one change of one
-- session at one version: a retried write whose first try committed (its
-- answer was lost) adds no second copy. "updated" events need no index: they
-- are inserted from the rows the write's version-guarded upsert returns, and
-- a retry's upsert writes (and returns) none.
CREATE UNIQUE INDEX session_events_lifecycle_idx ON session_events (session_id, version, kind)
    WHERE kind <> 'updated';
