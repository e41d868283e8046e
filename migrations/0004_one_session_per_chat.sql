-- trio-sessions schema, version 4: at most one active session per chat.
--
-- A chat (`chat_id`) has at most one active session per user and agent:
-- `session_for_chat` finds it or opens it, `create` and `update` refuse a
-- second one, and this index makes PostgreSQL refuse it too, whichever
-- process writes. Keyed by columns a touch never changes, so flushed
-- activity stays a heap-only update (see 0002); only ending a session, or
-- moving it to another agent or chat, updates the index.
--
-- A database written by an earlier version may hold several active
-- sessions for one chat. All but the most recently active of each are
-- ended here, with `end_reason` 'superseded' (their rows stay, readable).
-- Stop runtimes of earlier versions before migrating: one still holding a
-- superseded session in memory would have its later writes of it refused.

UPDATE sessions AS s
SET is_active = false, ended_at = now(), end_reason = 'superseded', updated_at = now(),
    version = s.version + 1
FROM (SELECT id, row_number() OVER (PARTITION BY user_id, agent, chat_id
                                    ORDER BY last_activity DESC, created_at DESC, id DESC) AS rank
      FROM sessions WHERE is_active AND chat_id IS NOT NULL) AS ranked
WHERE s.id = ranked.id AND ranked.rank > 1;

CREATE UNIQUE INDEX sessions_chat_active_idx ON sessions (user_id, agent, chat_id)
    WHERE is_active AND chat_id IS NOT NULL;
