"""The SQL text of `PostgresStore`: every statement it runs, as constants.

Every value reaches PostgreSQL as a bind parameter (`$1`, `$2`, ...); no
text here is built from input. The `list` variants are built once, at
import, from constant fragments. This module, the bridge and the admin
helpers are the only places in the package that hold SQL.
"""

from __future__ import annotations

import itertools
from typing import Final

# The columns of `sessions`, in the order of `Session`'s fields.
SESSION_COLUMNS: Final = (
    "id, user_id, agent, chat_id, title, state, metadata, notes, is_active, message_count,"
    " created_at, updated_at, last_activity, expires_at, ended_at, end_reason, version, timeout"
)

# One statement upserts a whole batch: one array per column, unnested into rows.
# The WHERE of DO UPDATE is the version guard that makes retries and stale
# writers harmless (a row only ever moves to a newer version). A new row is
# inserted with its owner ($19, the writing instance) and epoch; an update
# leaves them. This is the statement of writes without an owner, and of the
# batches whose rows a LOCK_FOR_WRITE has already checked; the others carry
# the fence in their statements (the *_OWNED ones below).
_INSERT_SESSIONS: Final = f"""
INSERT INTO sessions ({SESSION_COLUMNS}, owner, owner_epoch)
SELECT id, user_id, agent, chat_id, title, state, metadata::jsonb, notes::jsonb, is_active,
       message_count, created_at, updated_at, last_activity, expires_at, ended_at, end_reason,
       version, timeout, $19::uuid, owner_epoch
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
            $8::text[], $9::boolean[], $10::integer[], $11::timestamptz[], $12::timestamptz[],
            $13::timestamptz[], $14::timestamptz[], $15::timestamptz[], $16::text[], $17::bigint[],
            $18::float8[], $20::bigint[])
     AS row ({SESSION_COLUMNS}, owner_epoch)
"""
UPSERT_SESSIONS: Final = _INSERT_SESSIONS + """ON CONFLICT (id) DO UPDATE SET
    user_id = EXCLUDED.user_id, agent = EXCLUDED.agent, chat_id = EXCLUDED.chat_id,
    title = EXCLUDED.title, state = EXCLUDED.state, metadata = EXCLUDED.metadata,
    notes = EXCLUDED.notes, is_active = EXCLUDED.is_active,
    message_count = EXCLUDED.message_count, created_at = EXCLUDED.created_at,
    updated_at = EXCLUDED.updated_at, last_activity = EXCLUDED.last_activity,
    expires_at = EXCLUDED.expires_at, ended_at = EXCLUDED.ended_at,
    end_reason = EXCLUDED.end_reason, version = EXCLUDED.version, timeout = EXCLUDED.timeout
WHERE sessions.version < EXCLUDED.version
"""

# The fence in the statements of a runtime's writes (WriteBatch): a stored row
# is written only where it still names the batch's owner ($19) and the
# session's epoch, under the lock the statement takes on it; RETURNING says
# which rows were written, so nothing is read first (PostgresStore.write).
# Rows go in id order (PostgresStore sorts them, and the plans below visit
# them in the arrays' order), so two writers lock them in the same order.
#
# A new session's row (WriteBatch.created) is inserted, or, stored already (a
# retry; a place() that wrote it first), updated under the fence. ON CONFLICT
# locks the row even where the WHERE is false.
UPSERT_OWNED: Final = UPSERT_SESSIONS + """
  AND sessions.owner = $19 AND sessions.owner_epoch = EXCLUDED.owner_epoch
RETURNING sessions.id
"""
# Any other row is only ever updated: a session missing from the table was
# deleted (by another owner) and must stay missing.
UPDATE_OWNED: Final = f"""
UPDATE sessions AS s SET
    user_id = r.user_id, agent = r.agent, chat_id = r.chat_id, title = r.title, state = r.state,
    metadata = r.metadata::jsonb, notes = r.notes::jsonb, is_active = r.is_active,
    message_count = r.message_count, created_at = r.created_at, updated_at = r.updated_at,
    last_activity = r.last_activity, expires_at = r.expires_at, ended_at = r.ended_at,
    end_reason = r.end_reason, version = r.version, timeout = r.timeout
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
            $8::text[], $9::boolean[], $10::integer[], $11::timestamptz[], $12::timestamptz[],
            $13::timestamptz[], $14::timestamptz[], $15::timestamptz[], $16::text[], $17::bigint[],
            $18::float8[], $20::bigint[])
     AS r ({SESSION_COLUMNS}, owner_epoch)
WHERE s.id = r.id AND s.version < r.version AND s.owner = $19 AND s.owner_epoch = r.owner_epoch
RETURNING s.id
"""

# The rows a fenced statement did not write: a retry whose first try committed
# (the version guard), or rows fenced or missing. Locked in id order and read,
# their owner and epoch cannot change until the commit: the sessions whose
# owner or epoch differ are left out of the statements that follow. Also the
# first statement of a batch whose feed events must come before its rows'
# (PostgresStore.write), for all its rows.
LOCK_FOR_WRITE: Final = """
SELECT id, owner, owner_epoch FROM sessions WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE
"""

# The unique index over active sessions' chats (migration 0004), and the
# session that has a chat: what `place` answers when its write ran into it.
CHAT_INDEX: Final = "sessions_chat_active_idx"
CHAT_HOLDER: Final = """
SELECT id FROM sessions
WHERE user_id = $1 AND agent = $2 AND chat_id = $3 AND is_active AND chat_id IS NOT NULL AND id <> $4
"""

# A new session placed (Store.place): inserted unless its chat is held (or its id is
# stored: a retry whose first try committed); neither is an error, so neither aborts
# a transaction nor writes an ERROR to the server's log. RETURNING says which.
INSERT_NEW_SESSION: Final = _INSERT_SESSIONS + "ON CONFLICT DO NOTHING RETURNING id"
SESSION_STORED: Final = f"SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1"
# A new session is dated after every session of its chat that ended (Store.place): the
# latest end after its date (committed while its insert waited for it), and the row moved.
LATEST_CHAT_END: Final = """
SELECT max(ended_at) FROM sessions
WHERE user_id = $1 AND agent = $2 AND chat_id = $3 AND id <> $4 AND ended_at > $5
"""
REDATE_NEW_SESSION: Final = """
UPDATE sessions SET created_at = $3, updated_at = $3, last_activity = $3, expires_at = $4
WHERE id = $1 AND owner = $2 AND version = 1
"""

# Rows changed only by activity (WriteBatch.touched): five columns, not
# eighteen, under the same version guard; a row not stored stays missing.
# Touched rows come from activity alone, so `updated_at` is `last_activity`
# (WriteBatch), and `expires_at` comes as the microseconds after it: an
# integer times a microsecond is exact in PostgreSQL (below 2**53, and the
# longest timeout is 2**45 us), and time-only intervals add the same in every
# time zone. asyncpg encodes an integer in a quarter of a timestamp's time.
TOUCH_SESSIONS: Final = """
UPDATE sessions AS s
SET last_activity = t.last_activity, updated_at = t.last_activity,
    expires_at = t.last_activity + t.expires_in * INTERVAL '1 microsecond',
    version = t.version, message_count = t.message_count
FROM unnest($1::uuid[], $2::timestamptz[], $3::bigint[], $4::bigint[], $5::integer[])
     AS t (id, last_activity, expires_in, version, message_count)
WHERE s.id = t.id AND s.version < t.version
"""
# The same under the fence (see UPSERT_OWNED): the owner $6, each row's epoch.
TOUCH_OWNED: Final = """
UPDATE sessions AS s
SET last_activity = t.last_activity, updated_at = t.last_activity,
    expires_at = t.last_activity + t.expires_in * INTERVAL '1 microsecond',
    version = t.version, message_count = t.message_count
FROM unnest($1::uuid[], $2::timestamptz[], $3::bigint[], $4::bigint[], $5::integer[], $7::bigint[])
     AS t (id, last_activity, expires_in, version, message_count, owner_epoch)
WHERE s.id = t.id AND s.version < t.version AND s.owner = $6 AND s.owner_epoch = t.owner_epoch
RETURNING s.id
"""

# A retried append finds its (session_id, seq) stored and is skipped; of two
# copies in one batch the first is kept (test_message_appends_are_idempotent).
INSERT_MESSAGES: Final = """
INSERT INTO session_messages (session_id, seq, role, content, created_at)
SELECT * FROM unnest($1::uuid[], $2::integer[], $3::text[], $4::text[], $5::timestamptz[])
ON CONFLICT (session_id, seq) DO NOTHING
"""

# The durable feed (migration 0006). An event's transaction id and time are
# the columns' defaults: pg_current_xact_id() and now() of the write's
# transaction. Its snapshot columns, in this order:
EVENT_COLUMNS: Final = "kind, session_id, version, user_id, agent, chat_id, state, is_active, end_reason"

# A batch's lifecycle events (created, ended, expired, deleted), each with its
# own snapshot, in the order given (ordinality: the ids of one transaction
# follow it, so a session's events are in version order). Run before the
# rows' statements, whose "updated" events come after a session's lifecycle
# ones. A retry whose first try committed finds them stored (the partial
# unique index) and adds none.
INSERT_EVENTS: Final = f"""
INSERT INTO session_events ({EVENT_COLUMNS})
SELECT {EVENT_COLUMNS}
FROM unnest($1::text[], $2::uuid[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[],
            $8::boolean[], $9::text[]) WITH ORDINALITY AS e ({EVENT_COLUMNS}, n)
ORDER BY n
ON CONFLICT (session_id, version, kind) WHERE kind <> 'updated' DO NOTHING
"""


def _with_updated_events(statement: str, table: str, ids: int | None) -> str:
    """`statement` (an upsert or update of `sessions`, with no RETURNING or `RETURNING <table>.id`),
    and in the same statement the "updated" event of each row it wrote whose id is in the array
    `$ids` (of every row it wrote when `ids` is None): the snapshot comes back from the row as
    written (RETURNING), so nothing of it is sent twice, and a row the version guard or the fence
    skipped (a retry whose first try committed, a stale writer) has no event. The statement
    returns the ids of the rows written, as the fenced ones do without events."""
    columns = ["id", *EVENT_COLUMNS.split(", ")[2:]]  # the sessions' columns of the snapshot
    returned = ", ".join(f"{table}.{column}" for column in columns)
    statement = statement.rstrip().removesuffix(f"RETURNING {table}.id")
    joined = "" if ids is None else f" JOIN unnest(${ids}::uuid[]) AS u (id) ON u.id = w.session_id"
    return f"""
WITH written ({EVENT_COLUMNS.partition(", ")[2]}) AS ({statement} RETURNING {returned}),
logged AS (
    INSERT INTO session_events ({EVENT_COLUMNS})
    SELECT 'updated', w.session_id, w.version, w.user_id, w.agent, w.chat_id, w.state, w.is_active,
           w.end_reason
    FROM written AS w{joined}
)
SELECT session_id FROM written
"""


# The row statements with their rows' "updated" events (the feed is on): of
# the rows whose ids are in the last array, or, the common case, of every row.
UPSERT_SESSIONS_WITH_EVENTS: Final = _with_updated_events(UPSERT_SESSIONS, "sessions", 21)
TOUCH_SESSIONS_WITH_EVENTS: Final = _with_updated_events(TOUCH_SESSIONS, "s", 6)
UPSERT_SESSIONS_ALL_WITH_EVENTS: Final = _with_updated_events(UPSERT_SESSIONS, "sessions", None)
TOUCH_SESSIONS_ALL_WITH_EVENTS: Final = _with_updated_events(TOUCH_SESSIONS, "s", None)
UPSERT_OWNED_WITH_EVENTS: Final = _with_updated_events(UPSERT_OWNED, "sessions", 21)
UPDATE_OWNED_WITH_EVENTS: Final = _with_updated_events(UPDATE_OWNED, "s", 21)
TOUCH_OWNED_WITH_EVENTS: Final = _with_updated_events(TOUCH_OWNED, "s", 8)
UPSERT_OWNED_ALL_WITH_EVENTS: Final = _with_updated_events(UPSERT_OWNED, "sessions", None)
UPDATE_OWNED_ALL_WITH_EVENTS: Final = _with_updated_events(UPDATE_OWNED, "s", None)
TOUCH_OWNED_ALL_WITH_EVENTS: Final = _with_updated_events(TOUCH_OWNED, "s", None)


# The events after the position ($1 xid, as text, $2 id), committed for good:
# below the xmin of this statement's snapshot no transaction is running and
# none can start, so no event can ever appear before the last one returned
# (see migration 0006 and trio_sessions._feed).
READ_EVENTS: Final = """
SELECT xid::text, id, kind, session_id, user_id, agent, chat_id, state, is_active, end_reason, version, at
FROM session_events
WHERE (xid, id) > ($1::text::xid8, $2::bigint) AND xid < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY xid, id
LIMIT $3
"""

# Of the $2 first events by position, those older than $1 seconds of the
# database's time: a bounded delete that walks the position index only.
PRUNE_EVENTS: Final = """
WITH pruned AS (
    DELETE FROM session_events
    WHERE (xid, id) IN (SELECT xid, id FROM session_events ORDER BY xid, id LIMIT $2)
      AND at <= now() - $1 * INTERVAL '1 second'
    RETURNING 1
)
SELECT count(*)::integer FROM pruned
"""

DELETE_MESSAGES: Final = "DELETE FROM session_messages WHERE session_id = ANY($1::uuid[])"
DELETE_SESSIONS: Final = "DELETE FROM sessions WHERE id = ANY($1::uuid[])"

# A session's row and its newest $2 messages in one statement: one round trip,
# and one snapshot (a single statement sees one), so the messages match the
# row even while a flush commits. The messages come as four arrays, oldest
# first (NULL when there are none), which asyncpg decodes in C: cheaper than
# a row per message repeating the session's columns, or JSON.
LOAD_SESSION: Final = f"""
SELECT {", ".join(f"s.{column.strip()}" for column in SESSION_COLUMNS.split(","))},
       m.seqs, m.roles, m.contents, m.created
FROM sessions AS s CROSS JOIN LATERAL (
    SELECT array_agg(seq ORDER BY seq) AS seqs, array_agg(role ORDER BY seq) AS roles,
           array_agg(content ORDER BY seq) AS contents, array_agg(created_at ORDER BY seq) AS created
    FROM (SELECT seq, role, content, created_at FROM session_messages
          WHERE session_id = s.id ORDER BY seq DESC LIMIT $2) AS newest
) AS m
WHERE s.id = $1
"""

LOAD_SESSIONS: Final = f"SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ANY($1::uuid[])"

NEWEST_MESSAGES_UP_TO: Final = """
SELECT seq, role, content, created_at FROM session_messages
WHERE session_id = $1 AND seq <= $2 ORDER BY seq DESC LIMIT $3
"""

# extract() gives the exact numeric number of seconds (PostgreSQL 14 and later);
# its cast to float8 rounds correctly, as Python's datetime.timestamp() does,
# so the two are equal (test_live_deadlines_are_exact_timestamps).
LIVE_DEADLINES: Final = """
SELECT id, extract(epoch FROM expires_at)::float8 FROM sessions WHERE is_active ORDER BY expires_at
"""

# Ownership (trio_sessions._ownership). An instance is live while it has not
# left and its lease, judged by the server's clock, has not run out.
_LIVE_OWNER: Final = """EXISTS (SELECT 1 FROM instances AS i
    WHERE i.id = s.owner AND i.left_at IS NULL AND i.lease_until > now())"""

# A new instance is shared from the start when others are live (it has created
# nothing yet); the answer says which. STORE_NOW, run after the commit, is a
# time every later transaction of another instance starts after.
REGISTER_INSTANCE: Final = """
INSERT INTO instances (id, started_at, renewed_at, lease_until, host, pid, shared_since)
VALUES ($1, now(), now(), now() + $2 * INTERVAL '1 second', $3, $4,
        CASE WHEN EXISTS (SELECT 1 FROM instances WHERE left_at IS NULL AND lease_until > now())
             THEN now() END)
RETURNING (shared_since IS NOT NULL)::integer
"""
STORE_NOW: Final = "SELECT extract(epoch FROM now())::float8"
# A lease that ran out is never renewed: the instance must rejoin. The answer:
# how many other instances are live, seen in the statement's own snapshot; an
# instance that sees none is recorded alone in that same statement, before it
# goes back to writing creates behind.
RENEW_LEASE: Final = """
WITH peers AS (
    SELECT count(*)::integer AS live FROM instances
    WHERE id <> $1 AND left_at IS NULL AND lease_until > now()
)
UPDATE instances SET renewed_at = now(), lease_until = now() + $2 * INTERVAL '1 second',
    shared_since = CASE WHEN $3::boolean AND (SELECT live FROM peers) > 0
                        THEN coalesce(shared_since, now()) END
WHERE id = $1 AND left_at IS NULL AND lease_until > now()
RETURNING (SELECT live FROM peers)
"""
# The live instances that may still hold a create of theirs unflushed for an
# instance that started at $2: not shared, or not renewed as shared since then,
# unless shared since their own start (never alone: every create committed).
UNAWARE: Final = """
SELECT count(*)::integer FROM instances
WHERE id <> $1 AND left_at IS NULL AND lease_until > now()
  AND NOT (shared_since IS NOT NULL
           AND (shared_since = started_at OR renewed_at > to_timestamp($2::float8)))
"""
LEAVE: Final = "UPDATE instances SET left_at = now() WHERE id = $1 AND left_at IS NULL"
# Instances gone for a day are forgotten (each start adds one).
FORGET_INSTANCES: Final = """
DELETE FROM instances
WHERE coalesce(left_at, lease_until) < now() - INTERVAL '1 day'
"""

# Take the session if nobody live owns it (the epoch grows when the owner
# changes), or find it already ours; with its newest $3 messages, as
# LOAD_SESSION, in one statement.
ACQUIRE: Final = f"""
WITH taken AS (
    UPDATE sessions AS s
    SET owner = $2, owner_epoch = s.owner_epoch + CASE WHEN s.owner = $2 THEN 0 ELSE 1 END
    WHERE s.id = $1 AND (s.owner IS NULL OR s.owner = $2 OR NOT {_LIVE_OWNER})
    RETURNING {SESSION_COLUMNS}, owner_epoch
)
SELECT {", ".join(f"t.{column.strip()}" for column in SESSION_COLUMNS.split(","))},
       m.seqs, m.roles, m.contents, m.created, t.owner_epoch
FROM taken AS t CROSS JOIN LATERAL (
    SELECT array_agg(seq ORDER BY seq) AS seqs, array_agg(role ORDER BY seq) AS roles,
           array_agg(content ORDER BY seq) AS contents, array_agg(created_at ORDER BY seq) AS created
    FROM (SELECT seq, role, content, created_at FROM session_messages
          WHERE session_id = t.id ORDER BY seq DESC LIMIT $3) AS newest
) AS m
"""
OWNER_OF: Final = "SELECT owner FROM sessions WHERE id = $1"

# Many at once, for the expiry of sessions whose owner is gone; rows in id order.
CLAIM: Final = f"""
UPDATE sessions AS s
SET owner = $2, owner_epoch = s.owner_epoch + CASE WHEN s.owner = $2 THEN 0 ELSE 1 END
FROM (SELECT id FROM sessions WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE) AS locked
WHERE s.id = locked.id AND (s.owner IS NULL OR s.owner = $2 OR NOT {_LIVE_OWNER})
RETURNING {", ".join(f"s.{column.strip()}" for column in SESSION_COLUMNS.split(","))}, s.owner_epoch
"""

# Active sessions nobody live owns: all of them at start, those due before
# $1 (POSIX seconds) for the sweeper.
FREE_DEADLINES: Final = f"""
SELECT s.id, extract(epoch FROM s.expires_at)::float8 FROM sessions AS s
WHERE s.is_active AND ($1::float8 IS NULL OR s.expires_at < to_timestamp($1::float8))
  AND (s.owner IS NULL OR NOT {_LIVE_OWNER})
ORDER BY s.expires_at
"""

# The newest request for a session wins; NOTIFY wakes its owner (a
# notification is sent at commit, and may be lost: owners poll too).
REQUEST_HANDOFF: Final = """
WITH asked AS (
    INSERT INTO session_handoffs (session_id, owner, requester, requested_at)
    VALUES ($1, $2, $3, now())
    ON CONFLICT (session_id) DO UPDATE
    SET owner = EXCLUDED.owner, requester = EXCLUDED.requester, requested_at = EXCLUDED.requested_at
    RETURNING 1
)
SELECT pg_notify($4, '') FROM asked
"""
HANDOFF_REQUESTS: Final = "SELECT session_id, requester FROM session_handoffs WHERE owner = $1"
DROP_HANDOFF: Final = "DELETE FROM session_handoffs WHERE session_id = $1 AND owner = $2"
# Move the owner and drop the request in one transaction, then wake the new owner.
GRANT: Final = """
WITH granted AS (
    UPDATE sessions SET owner = $4, owner_epoch = owner_epoch + 1
    WHERE id = $1 AND owner = $2 AND owner_epoch = $3
    RETURNING id
), dropped AS (
    DELETE FROM session_handoffs WHERE session_id = $1 AND EXISTS (SELECT 1 FROM granted)
)
SELECT pg_notify($5, '') FROM granted
"""

HEALTH_CHECK: Final = "SELECT 1"

CREATE_SCHEMA_MIGRATIONS: Final = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name       text        PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
APPLIED_MIGRATIONS: Final = "SELECT name FROM schema_migrations"
#: Whether the migrations table exists (visible on the search path), for a runtime that may not create it.
SCHEMA_MIGRATIONS_EXISTS: Final = "SELECT to_regclass('schema_migrations') IS NOT NULL"
RECORD_MIGRATION: Final = "INSERT INTO schema_migrations (name) VALUES ($1)"
TERMINATE_CONNECTIONS: Final = """
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE datname = $1 AND pid <> pg_backend_pid()
"""
LOCK_MIGRATIONS: Final = "SELECT pg_advisory_lock($1)"
UNLOCK_MIGRATIONS: Final = "SELECT pg_advisory_unlock($1)"

# The optional equality filters of `list`, in `ListQuery` order; `after` and
# the limit follow them.
LIST_FILTERS: Final = ("user_id = ${}", "agent = ${}", "chat_id = ${}", "is_active = ${}")


def list_sql(present: tuple[bool, ...]) -> str:
    """The `list` query for one combination of present filters (run at import only)."""
    conditions = []
    count = 0
    for template, on in zip(LIST_FILTERS, present[:4], strict=True):
        if on:
            count += 1
            conditions.append(template.format(count))
    if present[4]:  # keyset pagination: strictly after the last row of the previous page
        conditions.append(f"(created_at, id) < (${count + 1}, ${count + 2})")
        count += 2
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    return (f"SELECT {SESSION_COLUMNS} FROM sessions{where}"
            f" ORDER BY created_at DESC, id DESC LIMIT ${count + 1}")


# Keyed by (user_id, agent, chat_id, active, after) "is given": 32 constant texts.
LIST_SQL: Final = {present: list_sql(present)
                    for present in itertools.product((False, True), repeat=5)}
