"""The commands an actor applies, and `Reply`, the hand-off of one command's answer.

Every public call on a session becomes one of the small frozen commands
below. A command that answers `T` is a `Command[T]`, and `dispatch` sends it
to the matching method of its target (the actor), so a call's result is
typed from the public method down to the handler without a cast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, cast

import trio

from ._model import Message, Session

if TYPE_CHECKING:
    from ._writebehind import DurableWaiter

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class CommandTarget(Protocol):
    """What applies commands: one method per command (the actor)."""

    def touch(self, command: Touch, now: float) -> Session: ...
    def update(self, command: Update, now: float) -> Session: ...
    def append_message(self, command: AppendMessage, now: float) -> Session: ...
    def add_note(self, command: AddNote, now: float) -> Session: ...
    def end(self, command: End, now: float) -> Session: ...
    def delete(self, command: Delete, now: float) -> None: ...
    def expire(self, command: Expire, now: float) -> bool: ...
    def read(self, command: Read, now: float) -> Session: ...
    def context(self, command: Context, now: float) -> tuple[Message, ...]: ...


class Command(Generic[T_co]):
    """A request to a session's actor whose answer is a `T_co`."""

    __slots__ = ()

    #: Changes the session (and so needs room in the write-behind buffer).
    mutating = True
    #: Returns only once the change is committed.
    durable = False
    #: When set, the session must belong to this user (else `SessionNotFound`).
    owner: str | None = None
    #: Written through to the store by the actor's task, which awaits it
    #: (`SessionActor.write_through`); never applied on a caller's fast path.
    through = False

    def dispatch(self, target: CommandTarget, now: float) -> T_co:
        raise NotImplementedError  # pragma: no cover - every command overrides it


@dataclass(frozen=True, slots=True)
class Touch(Command[Session]):
    """Sent by `update_last_activity`."""

    durable: bool

    def dispatch(self, target: CommandTarget, now: float) -> Session:
        return target.touch(self, now)


@dataclass(frozen=True, slots=True)
class Update(Command[Session]):
    """Sent by `update`: `changes` holds only the fields the caller passed.

    `through` when it changes the agent or the chat: the session's chat may
    change, which the store decides (`Store.place`).
    """

    expected_version: int | None
    changes: dict[str, Any]
    durable: bool
    owner: str | None = None
    through: bool = False

    def dispatch(self, target: CommandTarget, now: float) -> Session:
        return target.update(self, now)


@dataclass(frozen=True, slots=True)
class AppendMessage(Command[Session]):
    """Sent by `append_message`."""

    role: str
    content: str
    durable: bool
    owner: str | None = None

    def dispatch(self, target: CommandTarget, now: float) -> Session:
        return target.append_message(self, now)


@dataclass(frozen=True, slots=True)
class AddNote(Command[Session]):
    """Sent by `add_note`."""

    text: str
    durable: bool
    owner: str | None = None

    def dispatch(self, target: CommandTarget, now: float) -> Session:
        return target.add_note(self, now)


@dataclass(frozen=True, slots=True)
class End(Command[Session]):
    """Sent by `end`: a soft delete with a reason."""

    reason: str
    durable: bool
    owner: str | None = None

    def dispatch(self, target: CommandTarget, now: float) -> Session:
        return target.end(self, now)


@dataclass(frozen=True, slots=True)
class Delete(Command[None]):
    """Sent by `delete`: a hard delete, always waited for until committed."""

    durable: bool = True

    def dispatch(self, target: CommandTarget, now: float) -> None:
        return target.delete(self, now)


@dataclass(frozen=True, slots=True)
class Expire(Command[bool]):
    """Sent by the expiry engine and `cleanup_old_sessions` when `deadline` is due.

    Answers whether this command expired the session.
    """

    deadline: float

    def dispatch(self, target: CommandTarget, now: float) -> bool:
        return target.expire(self, now)


@dataclass(frozen=True, slots=True)
class Read(Command[Session]):
    """Sent by `get` when the session is not resident (or may be overdue).

    Also what the supervisor sends to make an actor reload a session whose
    row the database refused.
    """

    mutating = False

    def dispatch(self, target: CommandTarget, now: float) -> Session:
        return target.read(self, now)


@dataclass(frozen=True, slots=True)
class Context(Command[tuple[Message, ...]]):
    """Sent by `context`."""

    limit: int
    owner: str | None = None
    mutating = False

    def dispatch(self, target: CommandTarget, now: float) -> tuple[Message, ...]:
        return target.context(self, now)


#: The two Touch commands (immutable): the commonest call builds none.
TOUCH: dict[bool, Touch] = {False: Touch(False), True: Touch(True)}


class Reply(Generic[T]):
    """One command's answer, handed from the actor to the waiting caller.

    The caller parks its own task (`wait_task_rescheduled`), which is the
    cheapest hand-off Trio has; if it is cancelled before the answer comes, the
    abort marks the command abandoned so the actor skips it.
    """

    __slots__ = ("_task", "abandoned", "done", "error", "value", "waiter")

    def __init__(self) -> None:
        self.value: T | None = None
        self.error: BaseException | None = None
        self.done = False
        self.abandoned = False
        #: Set by the actor for a durable command: what to wait on for the commit.
        self.waiter: DurableWaiter | None = None
        self._task: trio.lowlevel.Task | None = None

    def settle(self, value: T | None, error: BaseException | None = None) -> None:
        """Answer (with `value`, or with `error` to raise), waking the caller."""
        self.value = value
        self.error = error
        self.done = True
        task = self._task
        if task is not None:
            self._task = None
            trio.lowlevel.reschedule(task)

    async def wait(self) -> T:
        """The value, or raise the error. Cancelled before the answer: abandons the command."""
        if self.done:
            await trio.lowlevel.cancel_shielded_checkpoint()
        else:
            self._task = trio.lowlevel.current_task()

            def abort(_: object) -> trio.lowlevel.Abort:
                self._task = None
                self.abandoned = True
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
        if self.error is not None:
            raise self.error
        return cast(T, self.value)  # settled without an error: the command's answer
