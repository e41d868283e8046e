-- trio-sessions schema, version 2: flushes update session rows in place.
--
-- Every activity moves `expires_at`, and `expires_at` was the key of
-- sessions_live_expiry_idx, so every flushed touch was a non-HOT update: a
-- new row version on another page plus a new entry in each of the table's
-- five indexes. With no indexed column changing, and room left on the page,
-- PostgreSQL updates the row in place (a heap-only tuple) and touches no
-- index. Measured with 200,000 sessions and batches of 2,000 touches through
-- PostgresStore.write: about 21,000 rows/s and 0 % HOT before, about 33,000
-- rows/s and 100 % HOT after, indexes a quarter smaller.
--
-- Applied in one transaction by the runner; CREATE INDEX blocks writes to
-- `sessions` while it builds (seconds for a million rows).

DROP INDEX sessions_live_expiry_idx;

-- live_deadlines() at start: only live sessions, without reading the ended
-- ones (soft deletes accumulate). Keyed by a column that never changes, so
-- it does not stand in the way of HOT updates; only ending a session, which
-- changes `is_active`, updates it. The query sorts by `expires_at` itself:
-- with most rows live, a sequential scan and a sort beat an index scan in
-- `expires_at` order, which visits the heap in random order.
CREATE INDEX sessions_live_idx ON sessions (id) WHERE is_active;

-- Leave 15 % of each page free for new versions of its rows, so that an
-- update finds room on the same page. It applies to pages filled from now
-- on; existing pages get room as their rows are updated and pruned.
ALTER TABLE sessions SET (fillfactor = 85);
