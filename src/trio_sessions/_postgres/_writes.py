"""The statements of one `PostgresStore.write`, as scripts for `Database.transaction`.

Three ways to write a batch (chosen by `PostgresStore.write`): `unfenced`
for a batch without an owner; `fenced`, the fence in the row statements,
for a batch with one; `locked`, every row locked and read first, for a
batch whose lifecycle feed events must go before its rows. Each script
yields its statements one at a time, building each one's arrays just
before it runs, and is sent each one's rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar
from uuid import UUID

from .._model import Session
from .._store import WriteBatch
from . import _rows as rows
from . import _sql as sql

if TYPE_CHECKING:
    from ._bridge import Script, Statement

R = TypeVar("R")

#: Rows per statement of a write: ~4 ms of encoding full rows (see `unfenced`).
ROWS_PER_STATEMENT: Final = 500


# The row statements, each as (no events, the events of the rows whose ids
# are in one more array, every row's event): see `_sql._with_updated_events`.
_UPSERT: Final = (sql.UPSERT_SESSIONS, sql.UPSERT_SESSIONS_WITH_EVENTS, sql.UPSERT_SESSIONS_ALL_WITH_EVENTS)
_TOUCH: Final = (sql.TOUCH_SESSIONS, sql.TOUCH_SESSIONS_WITH_EVENTS, sql.TOUCH_SESSIONS_ALL_WITH_EVENTS)
_UPSERT_OWNED: Final = (sql.UPSERT_OWNED, sql.UPSERT_OWNED_WITH_EVENTS, sql.UPSERT_OWNED_ALL_WITH_EVENTS)
_UPDATE_OWNED: Final = (sql.UPDATE_OWNED, sql.UPDATE_OWNED_WITH_EVENTS, sql.UPDATE_OWNED_ALL_WITH_EVENTS)
_TOUCH_OWNED: Final = (sql.TOUCH_OWNED, sql.TOUCH_OWNED_WITH_EVENTS, sql.TOUCH_OWNED_ALL_WITH_EVENTS)


def unfenced(batch: WriteBatch) -> Script:
    """The statements of a batch without the fence in them, in the same order as
    `MemoryStore.write`: feed events, rows, then messages, then deletes.

    Each statement takes at most `ROWS_PER_STATEMENT` rows, its arrays built
    just before it runs (the script is resumed between executions): encoding
    holds the event loop (Trio's, that is), and a whole batch of full rows
    would hold it ~15 ms (benchmarks/s5).
    """
    if batch.events:
        # Lifecycle events first: a session's "updated" event comes after them (WriteBatch).
        lifecycle = [event for event in batch.events if event.kind != "updated"]
        yield from _in_parts(sql.INSERT_EVENTS, rows.event_columns, lifecycle)
    for statement, args, _ in _row_statements(batch, ((_UPSERT, batch.sessions), (_TOUCH, batch.touched)),
                                              fence=False):
        yield statement, args
    yield from _messages_and_deletes(batch)


def locked(batch: WriteBatch, fenced: list[UUID]) -> Script:
    """A batch with an owner whose feed events must go first: every row locked and read, in id
    order, before anything is written; the sessions that fail the fence go into `fenced`."""
    every = {*batch.session_ids(), *(session_id for session_id, _ in batch.messages)}
    found = yield sql.LOCK_FOR_WRITE, (list(every),)
    fenced.extend(rows.fenced(batch, found))
    yield from unfenced(_without(batch, fenced))


def fenced(batch: WriteBatch, fenced: list[UUID]) -> Script:
    """A batch with an owner, the fence in its row statements; the sessions that fail it go into
    `fenced` (see `PostgresStore.write`)."""
    created = batch.created
    if created:
        new = [s for s in batch.sessions if s.id in created]
        changed: Sequence[Session] = [s for s in batch.sessions if s.id not in created]
    else:
        new, changed = [], batch.sessions
    unsure: list[UUID] = []  # the sessions no statement vouched for: the fence decides under a lock
    groups = ((_UPSERT_OWNED, new), (_UPDATE_OWNED, changed), (_TOUCH_OWNED, batch.touched))
    for statement, args, part in _row_statements(batch, groups, fence=True):
        found = yield statement, args
        if len(found) < len(part):
            written = {row[0] for row in found}
            unsure.extend(s.id for s in part if s.id not in written)
    if batch.messages:
        with_rows = {*(s.id for s in batch.sessions), *(s.id for s in batch.touched)}
        unsure.extend({session_id for session_id, _ in batch.messages if session_id not in with_rows})
    unsure.extend(batch.deletes)
    if unsure:
        found = yield sql.LOCK_FOR_WRITE, (list(set(unsure)),)
        fenced.extend(rows.fenced(batch, found, among=unsure))
    yield from _messages_and_deletes(_without(batch, fenced))


def _without(batch: WriteBatch, fenced: Sequence[UUID]) -> WriteBatch:
    if not fenced:
        return batch
    refused = set(fenced)
    return batch.only(lambda session_id: session_id not in refused)


def _row_statements(batch: WriteBatch, groups: Iterable[tuple[tuple[str, str, str], Sequence[Session]]],
                    *, fence: bool) -> Iterator[tuple[str, list[Any], Sequence[Session]]]:
    """The statements of the batch's rows, each with its arguments and its rows (in id order).

    `groups`: the statements (without events, with some, with all; see
    `_UPSERT`) of each kind of row, and the rows of that kind. Full rows carry
    the owner and their epochs (the insert of a new row stores them); with
    `fence` touched rows do too.
    """
    owner, epochs = batch.owner, batch.epochs

    def full(sessions: Sequence[Session]) -> list[Any]:
        return [*rows.session_columns(sessions), owner, [epochs.get(s.id, 0) for s in sessions]]

    def touched(sessions: Sequence[Session]) -> list[Any]:
        if not fence:
            return rows.touched_columns(sessions)
        return [*rows.touched_columns(sessions), owner, [epochs.get(s.id, 0) for s in sessions]]

    variant, updated = 0, set()
    count = sum(1 for event in batch.events if event.kind == "updated")
    if count and count == len(batch.sessions) + len(batch.touched):  # every row has one: no ids to send
        variant = 2
    elif count:
        variant = 1
        updated = {event.session.id for event in batch.events if event.kind == "updated"}
    for statements, sessions in groups:
        columns = touched if statements in (_TOUCH, _TOUCH_OWNED) else full
        ordered = rows.by_id(sessions)
        for start in range(0, len(ordered), ROWS_PER_STATEMENT):
            part = ordered[start:start + ROWS_PER_STATEMENT]
            args = columns(part)
            if variant == 1:
                args.append([s.id for s in part if s.id in updated])
            yield statements[variant], args, part


def _messages_and_deletes(batch: WriteBatch) -> Iterator[Statement]:
    yield from _in_parts(sql.INSERT_MESSAGES, rows.message_columns, batch.messages)
    if batch.deletes:
        deletes = sorted(batch.deletes)
        yield sql.DELETE_MESSAGES, (deletes,)
        yield sql.DELETE_SESSIONS, (deletes,)


def _in_parts(statement: str, columns: Callable[[Sequence[R]], list[Sequence[Any]]], items: Sequence[R]
              ) -> Iterator[Statement]:
    for start in range(0, len(items), ROWS_PER_STATEMENT):
        yield statement, columns(items[start:start + ROWS_PER_STATEMENT])
