"""Scenario 9, a chat's session found or opened: `session_for_chat` against list-then-create.

An orchestrator answering a chat message first needs the chat's session.
1,000 chats, each of a user of its own, have an active, resident session;
N callers (1, 100, 1000), each on a chat of its own, look their chat's
session up back to back for a fixed time. Variants, in rounds whose order
rotates from round to round:

- ceiling: `get()` of the chat's resident session by id, the runtime's
  cheapest call. A resident `session_for_chat` never reaches the actor: it
  reads the resident actor's published snapshot through the chat index, as
  `get()` does by id. So `get()`, not s1's bare Trio request/reply through
  a mailbox, is the honest ceiling of a lookup: the same path, without the
  chat's key to check. The bare request/reply (a memory channel to a server
  task per session and back, a prebuilt frozen `Session`) is measured too,
  for reference: a lookup that went through an actor would pay it;
- find-or-open: `session_for_chat(user_id, agent, chat_id)`;
- per message, as an orchestrator does it: the lookup, then one
  `append_message` to the session found, back to back, so that each lookup
  follows its own user's change, usually not flushed yet. The lookup is
  `session_for_chat`, or today's alternative, list-then-create:
  `list(user_id=, chat_id=, agent=, active=True, limit=1)`, then
  `create(..., chat_id=)` if the page is empty (it never is here); with the
  last append pending, that `list()` waits for a flush first.

The runtime runs on `MemoryStore` and on PostgreSQL with its write-behind;
every variant starts with the buffer flushed. Each ratio is the median over
rounds of the round's ratio. Then latencies, one call at a time: `get()` and
`session_for_chat` of a resident session, and `list(user_id=u)` with
nothing pending, with changes of 100 other users pending (no flush:
`list()` waits only for changes its page could show) and with one change of
`u` pending (a flush, then the query), the cases alternating; and
`session_for_chat` on chats whose session is not resident: opening a new
chat (written through), the call after it (the session is not resident
yet: its actor loads it), and the first call on a session made by
`create(chat_id=)` (the store refuses a second session, then the actor
loads the one it has).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final
from uuid import UUID

from trio_sessions import MemoryStore, RuntimeConfig, Session, open_runtime
from trio_sessions._runtime import SessionRuntime

from ._harness import METADATA, Check, Context, Rate, Result, closed_loop, median, percentiles
from .s1_ceiling import bare_servers

NAME: Final = "s9"
TITLE: Final = "Find-or-open a chat's session"
NEEDS_POSTGRES: Final = True

#: A resident `session_for_chat` against `get()` of the same session. Measured 0.51-0.69 on
#: 2 cores (the rest is checking the four parts of the key); a lookup through the actor's
#: mailbox, a store call or a flush would fall below (s1's bare request/reply alone is
#: 0.2-0.44 of `get()` there).
TARGET_CEILING_RATIO: Final = 0.45
#: Per message, find-or-open against list-then-create: it must be faster.
TARGET_LIST_RATIO: Final = 1.0

AGENT: Final = "financeiro"
TEXT: Final = "Quero a segunda via do boleto"
#: Users with a pending change while one user's `list()` is timed.
OTHERS: Final = 100

Op = Callable[[int], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Chat:
    """One benchmark chat: its key and its session."""

    user_id: str
    chat_id: str
    session_id: UUID


async def open_chats(rt: SessionRuntime, count: int) -> list[Chat]:
    """`count` chats, each with its own user, their sessions opened and resident, everything flushed."""
    chats = []
    for index in range(count):
        user_id, chat_id = f"user-{index}", f"55119{index:08d}@c.us"
        session = await rt.session_for_chat(user_id, AGENT, chat_id, metadata=METADATA)
        chats.append(Chat(user_id, chat_id, session.id))
    for chat in chats:  # the second call activates the session's actor: from now on it is resident
        found = await rt.session_for_chat(chat.user_id, AGENT, chat.chat_id)
        if found.id != chat.session_id:
            raise AssertionError(f"session_for_chat found {found.id}, not {chat.session_id}")
    await rt.flush()
    return chats


def variants(rt: SessionRuntime, chats: list[Chat]) -> dict[str, Op]:
    """The runtime's variants on `chats`: the caller of index i uses chats[i]."""

    async def get(index: int) -> Session:
        return await rt.get(chats[index].session_id)

    async def find_or_open(index: int) -> Session:
        chat = chats[index]
        return await rt.session_for_chat(chat.user_id, AGENT, chat.chat_id)

    async def list_then_create(index: int) -> Session:
        chat = chats[index]
        page = await rt.list(user_id=chat.user_id, chat_id=chat.chat_id, agent=AGENT, active=True, limit=1)
        if page.items:
            return page.items[0]
        return await rt.create(chat.user_id, AGENT, chat_id=chat.chat_id, metadata=METADATA)

    def per_message(lookup: Callable[[int], Awaitable[Session]]) -> Op:
        async def op(index: int) -> Session:
            session = await lookup(index)
            return await rt.append_message(session.id, "user", TEXT)

        return op

    return {"get": get, "find-or-open": find_or_open,
            "find-or-open + append": per_message(find_or_open),
            "list-then-create + append": per_message(list_then_create)}


async def throughput(ctx: Context, runtimes: dict[str, SessionRuntime],  # noqa: ASYNC910  awaits in a non-empty loop
                     chats: dict[str, list[Chat]], result: Result) -> None:
    concurrencies = ctx.size([1, 100, 1000], [1, 10])
    seconds = ctx.size(0.6, 0.1)
    rounds = ctx.size(5, 1)
    mailbox = RuntimeConfig().mailbox_size
    lookups = result.table(
        f"lookup of a resident chat's session ({seconds} s per variant, median of {rounds} rotating "
        "rounds; ratio = find-or-open / get; ÷ req/reply = find-or-open / bare request/reply)",
        "callers", "bare req/reply ops/s", *(c for store in runtimes for c in (
            f"{store} get ops/s", f"{store} find-or-open ops/s", "ratio", "÷ req/reply")))
    messages = result.table(
        f"per message: the lookup, then one append_message ({seconds} s per variant, median of {rounds} "
        "rotating rounds; ratio = find-or-open / list-then-create)",
        "callers", *(c for store in runtimes for c in (
            f"{store} find-or-open ops/s", f"{store} list-then-create ops/s", "ratio")))
    ceiling_checks: list[tuple[str, int, float]] = []
    list_checks: list[tuple[str, int, float]] = []
    for callers in concurrencies:
        ops: dict[str, Op] = {}
        for store, rt in runtimes.items():
            ops.update({f"{store} {name}": op for name, op in variants(rt, chats[store][:callers]).items()})
        names = ["bare req/reply", *ops]
        rates: dict[str, list[Rate]] = {name: [] for name in names}
        for round_ in range(rounds):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                for rt in runtimes.values():
                    await rt.flush()
                if name == "bare req/reply":
                    async with bare_servers(callers, copy_snapshot=False, mailbox=mailbox) as op:
                        rates[name].append(await closed_loop(callers, seconds, op))
                else:
                    rates[name].append(await closed_loop(callers, seconds, ops[name]))

        def rate(name: str, rates: dict[str, list[Rate]] = rates) -> float:
            return median([r.per_second for r in rates[name]])

        def ratio(name: str, over: str, rates: dict[str, list[Rate]] = rates) -> float:
            pairs = zip(rates[name], rates[over], strict=True)
            return median([v.per_second / b.per_second for v, b in pairs])

        lookup_row: list[Any] = [callers, rate("bare req/reply")]
        message_row: list[Any] = [callers]
        for store in runtimes:
            to_ceiling = ratio(f"{store} find-or-open", f"{store} get")
            to_list = ratio(f"{store} find-or-open + append", f"{store} list-then-create + append")
            lookup_row += [rate(f"{store} get"), rate(f"{store} find-or-open"), to_ceiling,
                           ratio(f"{store} find-or-open", "bare req/reply")]
            message_row += [rate(f"{store} find-or-open + append"),
                            rate(f"{store} list-then-create + append"), to_list]
            ceiling_checks.append((store, callers, to_ceiling))
            list_checks.append((store, callers, to_list))
        lookups.add(*lookup_row)
        messages.add(*message_row)
        result.series.setdefault("throughput", {}).setdefault("callers", []).append(callers)
        for name in names:
            result.series["throughput"].setdefault(name, []).append(rate(name))
    for store, callers, value in ceiling_checks:
        result.checks.append(Check(f"s9 {store} find-or-open / get of a resident session, {callers} callers",
                                   value, TARGET_CEILING_RATIO, ">="))
    for store, callers, value in list_checks:
        result.checks.append(Check(f"s9 {store} per message, find-or-open / list-then-create, "
                                   f"{callers} callers", value, TARGET_LIST_RATIO, ">="))


async def latencies(ctx: Context, runtimes: dict[str, SessionRuntime],  # noqa: ASYNC910  awaits in a non-empty loop
                    chats: dict[str, list[Chat]], result: Result) -> None:
    samples = ctx.size(300, 10)
    others_n = min(OTHERS, min(len(c) for c in chats.values()) - 1)
    cases = ["get", "session_for_chat", "list, nothing pending", f"list, {others_n} other users pending",
             "list, this user pending"]
    found: dict[str, dict[str, list[float]]] = {store: {case: [] for case in cases} for store in runtimes}
    for store, rt in runtimes.items():
        chat, others = chats[store][0], chats[store][1:1 + others_n]
        for sample in range(samples):
            shift = sample % len(cases)
            for case in cases[shift:] + cases[:shift]:
                await rt.flush()
                if case == "list, this user pending":
                    await rt.append_message(chat.session_id, "user", TEXT)
                elif case.endswith("other users pending"):
                    for other in others:
                        await rt.append_message(other.session_id, "user", TEXT)
                started = time.perf_counter()
                if case == "get":
                    await rt.get(chat.session_id)
                elif case == "session_for_chat":
                    await rt.session_for_chat(chat.user_id, AGENT, chat.chat_id)
                else:
                    await rt.list(user_id=chat.user_id)
                found[store][case].append(time.perf_counter() - started)
    _latency_table(result, f"one call at a time, {samples} calls per case, cases alternating, on a chat "
                   "whose session is resident; list is list(user_id=u)", found)
    # Chats whose session is not resident: new ones, so they come after (the store grows).
    opening = ["opening a new chat", "the next call, which activates it",
               "first call on a session made by create(chat_id=)"]
    found = {store: {case: [] for case in opening} for store in runtimes}
    for store, rt in runtimes.items():
        for sample in range(samples):
            user_id = f"opening-{sample}"
            await rt.flush()
            started = time.perf_counter()
            await rt.session_for_chat(user_id, AGENT, "opened", metadata=METADATA)
            middle = time.perf_counter()
            await rt.session_for_chat(user_id, AGENT, "opened")
            found[store][opening[0]].append(middle - started)
            found[store][opening[1]].append(time.perf_counter() - middle)
            await rt.create(user_id, AGENT, chat_id="created", metadata=METADATA)
            await rt.flush()
            started = time.perf_counter()
            await rt.session_for_chat(user_id, AGENT, "created")
            found[store][opening[2]].append(time.perf_counter() - started)
    _latency_table(result, f"one call at a time, {samples} calls per case: session_for_chat on a chat "
                   "whose session is not resident", found)


def _latency_table(result: Result, title: str, found: dict[str, dict[str, list[float]]]) -> None:
    """A table of p50 and p99 per case (rows) and store (columns); the same in `series`."""
    stores = list(found)
    table = result.table(title, "call",
                         *(c for store in stores for c in (f"{store} p50 ms", f"{store} p99 ms")))
    for case in found[stores[0]]:
        row: list[Any] = [case]
        for store in stores:
            q = percentiles(found[store][case], (50, 99))
            row += [q["p50"] * 1e3, q["p99"] * 1e3]
        table.add(*row)
    latency = result.series.setdefault("latency", {})
    for store in stores:
        for case, values in found[store].items():
            latency[f"{store} {case}"] = percentiles(values, (50, 90, 99))


async def run(ctx: Context) -> Result:
    result = Result(NAME, TITLE)
    config = RuntimeConfig(flush_interval=0.2)
    count = ctx.size(1000, 10)
    async with ctx.fresh_database() as url:
        async with open_runtime(config, store=MemoryStore()) as memory_rt, \
                open_runtime(dataclasses.replace(config, database_url=url)) as pg_rt:
            runtimes = {"memory": memory_rt, "postgres": pg_rt}
            chats = {store: await open_chats(rt, count) for store, rt in runtimes.items()}
            await throughput(ctx, runtimes, chats, result)
            await latencies(ctx, runtimes, chats, result)
    result.notes.append("ceiling: get() of the resident session by id (a resident session_for_chat reads the "
                        "same published snapshot); bare req/reply: s1's Trio memory-channel request/reply "
                        "returning a prebuilt frozen Session, for reference")
    result.notes.append("list-then-create: list(user_id, chat_id, agent, active=True, limit=1), then "
                        "create() if the page is empty; per message, each lookup follows the caller's own "
                        "append, so each list() waits for a flush")
    return result
