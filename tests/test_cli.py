"""The `trio-sessions` command: the demo and its final check, and `migrate`."""

from __future__ import annotations

import dataclasses
import re
import socket
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit
from uuid import uuid4

import pytest
from loguru import logger

from trio_sessions import MemoryStore, RuntimeConfig, SecretUrl, Session, open_runtime
from trio_sessions._cli import _is_interrupt, main, parse_args, run_migrate
from trio_sessions._demo import DemoOptions, run_demo
from trio_sessions._demo_ledger import (
    Ledger,
    answer,
    chat_overlaps,
    check_active_chats,
    check_store,
    exchange_problems,
    question,
)
from trio_sessions._demo_processes import run_processes
from trio_sessions._model import Message

#: A timestamp for hand-made snapshots and messages.
AT = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """main() configures loguru for the whole process, as an application does; undo it."""
    yield
    logger.remove()
    logger.add(sys.stderr)
    logger.disable("trio_sessions")


async def test_demo_expires_sessions_and_its_check_passes(
        postgres_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = parse_args(["demo", "--duration", "4", "--users", "30", "--timeout", "1.5", "--seed", "7"])
    options = DemoOptions.from_args(args)
    assert options == DemoOptions(duration=4.0, users=30, timeout=1.5, seed=7, processes=1)

    code = await run_demo(options, postgres_url)

    out = capsys.readouterr().out
    assert code == 0, out
    summary = re.search(r"sessions\s+created ([\d,]+), expired ([\d,]+), ended ([\d,]+)", out)
    assert summary is not None, out
    created, expired, ended = (int(group.replace(",", "")) for group in summary.groups())
    assert created > 30 and expired > 0 and ended > 0, out
    assert re.search(r"update_last_activity p50 [\d.]+ ms, p99 [\d.]+ ms", out), out
    chats = re.search(r"chats\s+([\d,]+) messages asked session_for_chat \(([\d,]+) times two at once\), "
                      r"([\d,]+) sessions opened, ([\d,]+) reopened after the timeout", out)
    assert chats is not None, out
    messages, two_at_once, opened, _ = (int(group.replace(",", "")) for group in chats.groups())
    assert messages > opened > 0 and two_at_once > 0, out
    assert re.search(rf"^check passed: {created:,} sessions, [\d,]+ messages match$", out, re.M), out
    assert re.search(r"^check passed: [\d,]+ chats never had two active sessions at once, "
                     r"[\d,]+ exchanges were never interleaved$", out, re.M), out


async def test_demo_in_three_processes_hands_chats_over_and_its_check_passes(
        postgres_url: str, capfd: pytest.CaptureFixture[str]) -> None:
    """`demo --processes 3`: every user's messages reach any of three workers; the merged check holds."""
    args = parse_args(["demo", "--duration", "4", "--users", "20", "--timeout", "1.5", "--seed", "3",
                       "--processes", "3"])
    options = DemoOptions.from_args(args)
    assert options.processes == 3

    code = await run_processes(options, SecretUrl(postgres_url))

    out = capfd.readouterr().out
    assert code == 0, out
    workers = re.findall(r"^w(\d) summary: [\d,]+ operations .* hand-offs asked ([\d,]+), received ([\d,]+), "
                         r"granted ([\d,]+); fenced sessions (\d+), lease lapses (\d+)$", out, re.M)
    assert sorted(worker[0] for worker in workers) == ["0", "1", "2"], out
    assert sum(int(worker[3].replace(",", "")) for worker in workers) > 0, out  # chats moved
    assert re.search(r"^check passed: [\d,]+ sessions, [\d,]+ messages match", out, re.M), out
    assert re.search(r"^check passed: [\d,]+ chats never had two active sessions at once", out, re.M), out


async def test_demo_answers_in_the_chat_sessions_an_earlier_run_left_active(
        postgres_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Run again with the same seed before the sessions expire: the same chats, their sessions found."""
    options = DemoOptions(duration=1.5, users=10, timeout=60.0, seed=5)
    assert await run_demo(options, postgres_url) == 0, capsys.readouterr().out
    capsys.readouterr()

    assert await run_demo(options, postgres_url) == 0

    out = capsys.readouterr().out
    assert re.search(r"^check passed: [\d,]+ sessions, [\d,]+ messages match, "
                     r"and the rows of [1-9][\d,]* sessions of an earlier run$", out, re.M), out


async def test_demo_check_reports_what_postgres_lacks(postgres_url: str) -> None:
    """The check is not vacuous: a change the database lacks is reported."""
    config = RuntimeConfig(database_url=postgres_url)
    ledger = Ledger()
    async with open_runtime(config) as rt:
        session = ledger.created_session(await rt.create("u", "financeiro"))
        for role, content in (("user", question("oi", 1)), ("assistant", answer("olá", 1))):
            ledger.appended(await rt.append_message(session.id, role, content), role, content)
    assert await check_store(postgres_url, config, ledger) == []

    newest = ledger.newest[session.id]
    ledger.observe(dataclasses.replace(newest, state="resolved", version=newest.version + 1))
    ledger.messages[session.id].append(Message(3, "user", question("tchau", 2), newest.last_activity))
    problems = await check_store(postgres_url, config, ledger)

    assert sorted(problems) == [
        f"session {session.id}: 2 messages stored, 3 acknowledged; first difference at position 3",
        f"session {session.id}: stored row differs (acknowledged -> stored): "
        "state: 'resolved' -> 'active'; version: 4 -> 3",
    ]


async def chat_sessions(ledger: Ledger) -> tuple[Session, Session]:
    """Two sessions of one chat, the first ended: real snapshots, for the checks to be given doctored ones."""
    async with open_runtime(RuntimeConfig(), store=MemoryStore()) as rt:
        first = ledger.chat_session(await rt.session_for_chat("u", "max", "c", metadata={"run": ledger.run}))
        ledger.observe(await rt.end(first.id))
        second = ledger.chat_session(await rt.session_for_chat("u", "max", "c", metadata={"run": ledger.run}))
    return ledger.newest[first.id], second


async def test_demo_chat_check_reports_two_active_sessions_of_a_chat() -> None:
    ledger = Ledger()
    first, second = await chat_sessions(ledger)
    assert second.id != first.id and ledger.created == {first.id, second.id}
    assert chat_overlaps(ledger.sessions(), "acknowledged") == []

    # Had the first one stayed active, the chat would have had two sessions at once.
    still_active = dataclasses.replace(first, is_active=True, ended_at=None, end_reason=None)
    assert chat_overlaps([second, still_active], "in PostgreSQL") == [
        f"chat ('u', 'max', 'c'): two active sessions at once in PostgreSQL: {second.id} opened at "
        f"{second.created_at.isoformat()}, while {first.id} (opened at {first.created_at.isoformat()}) "
        f"was active until {first.expires_at.isoformat()}"]
    # Another agent's or another user's session on the same chat is another conversation.
    assert chat_overlaps([still_active, dataclasses.replace(second, agent="geral"),
                          dataclasses.replace(second, id=uuid4(), user_id="v")], "acknowledged") == []


async def test_demo_chat_check_lists_what_postgres_holds_active() -> None:
    ledger = Ledger()
    async with open_runtime(RuntimeConfig(), store=MemoryStore()) as rt:
        held = ledger.chat_session(await rt.session_for_chat("u", "max", "c", metadata={"run": ledger.run}))
        other = ledger.created_session(await rt.create("u", "max"))
        assert await check_active_chats(rt, ledger) == ([], 1)

        # A session the runtime acknowledged as ended must not be listed active.
        ledger.observe(dataclasses.replace(other, is_active=False, end_reason="user_left",
                                           version=other.version + 1))
        assert await check_active_chats(rt, ledger) == (
            [f"session {other.id}: active in PostgreSQL at the end, after the runtime acknowledged "
             f"its end (user_left)"], 1)
        assert held.id not in ledger.inherited


def test_demo_turn_check_reports_interleaved_exchanges() -> None:
    session = Session(
        id=uuid4(), user_id="u", agent="max", chat_id="c", title=None, state="active", metadata={},
        notes=(), is_active=True, message_count=0, created_at=AT, updated_at=AT, last_activity=AT,
        expires_at=AT, ended_at=None, end_reason=None, version=1, timeout=60.0)

    def messages(*tagged: tuple[str, int]) -> list[Message]:
        return [Message(seq, role, question("oi", number) if role == "user" else answer("olá", number), AT)
                for seq, (role, number) in enumerate(tagged, start=1)]

    q1, a1, q2, a2 = ("user", 1), ("assistant", 1), ("user", 2), ("assistant", 2)
    assert exchange_problems(session, messages(q1, a1, q2, a2)) == []
    assert exchange_problems(session, messages(q1, q2, a1, a2)) == [
        f"session {session.id}: message 2 (user: 'oi [m2]') should answer message 1 ('oi [m1]'): "
        f"turns interleaved"]
    assert exchange_problems(session, messages(q1, a2, q2, a1)) == [
        f"session {session.id}: message 2 (assistant: 'olá [re m2]') should answer message 1 "
        f"('oi [m1]'): turns interleaved"]
    # A question may go unanswered only in a session that expired (during the exchange).
    assert exchange_problems(session, messages(q1, a1, q2)) == [
        f"session {session.id}: its last message 3 ('oi [m2]') has no answer, and the session did not expire"]
    expired = dataclasses.replace(session, is_active=False, ended_at=AT, end_reason="expired")
    assert exchange_problems(expired, messages(q1, a1, q2)) == []


def test_migrate_needs_database_url(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                   restore_logging: None) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert main(["migrate"]) == 2
    captured = capsys.readouterr()
    assert "DATABASE_URL is not set" in captured.err
    assert captured.out == ""


async def test_migrate_applies_the_schema_once(postgres_url: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    parts = urlsplit(postgres_url)
    where = (f"host {parse_qs(parts.query)['host'][0]}, port 5432, database {parts.path[1:]!r}, "
             "user 'postgres'")
    assert await run_migrate(postgres_url) == 0
    assert capsys.readouterr().out == (
        f"migrated {where}: applied 6 migrations: "
        "0001_initial.sql, 0002_hot_updates.sql, 0003_ownership.sql, 0004_one_session_per_chat.sql, "
        "0005_create_visible_everywhere.sql, 0006_event_feed.sql\n")
    assert await run_migrate(postgres_url) == 0
    assert capsys.readouterr().out == f"the schema of {where} is up to date; nothing to apply\n"


def refused_url(password: str) -> Iterator[str]:
    """A URL whose port refuses connections (a socket bound there, not listening), while it lasts."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield f"postgresql://app:{password}@127.0.0.1:{bound.getsockname()[1]}/app"


@pytest.mark.parametrize("command", ["migrate", "demo"])
def test_errors_are_one_line_and_exit_codes_say_which_kind(
        command: str, postgres_server_url: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], restore_logging: None) -> None:
    argv = [command] + (["--duration", "1", "--users", "1"] if command == "demo" else [])
    folder = parse_qs(urlsplit(postgres_server_url).query)["host"][0]
    cases = [(f"postgresql://postgres@/no_such_db?host={folder}", 2, "database 'no_such_db' does not exist"),
             ("postgresql://app:half/ofthepassword@db.example/app", 2, "percent-encode it")]
    for url, code, expected in cases:
        monkeypatch.setenv("DATABASE_URL", url)
        assert main(argv) == code
        err = capsys.readouterr().err
        assert err.startswith(f"trio-sessions {command}: ") and err.count("\n") == 1, err
        assert expected in err and "half" not in err and "ofthepassword" not in err
    for url in refused_url("hunter2"):
        monkeypatch.setenv("DATABASE_URL", url)
        assert main(argv) == 3
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "cannot connect to PostgreSQL" in err and "hunter2" not in err, err
        # --debug shows where it came from, then the same line.
        assert main([*argv, "--debug"]) == 3
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and "ConnectionRefusedError" in err
        assert err.splitlines()[-1].startswith(f"trio-sessions {command}: cannot connect")
        assert "hunter2" not in err


@pytest.mark.parametrize("flags", [["--users", "0"], ["--duration", "-1"], ["--timeout", "nan"],
                                   ["--users", "many"]])
def test_demo_rejects_bad_flags(flags: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(["demo", *flags])
    assert exit_.value.code == 2
    assert f"argument {flags[0]}" in capsys.readouterr().err


def test_ctrl_c_is_recognised_through_nursery_groups() -> None:
    nested = BaseExceptionGroup("outer", [BaseExceptionGroup("inner", [KeyboardInterrupt()])])
    assert _is_interrupt(KeyboardInterrupt()) and _is_interrupt(nested)
    assert not _is_interrupt(BaseExceptionGroup("mixed", [KeyboardInterrupt(), ValueError()]))
    assert not _is_interrupt(ExceptionGroup("other", [ValueError()]))
