"""The `trio-sessions` command: the demo and its final check, and `migrate`."""

from __future__ import annotations

import dataclasses
import re
import socket
import sys
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
from loguru import logger

from trio_sessions import RuntimeConfig, open_runtime
from trio_sessions._cli import _is_interrupt, main, parse_args, run_migrate
from trio_sessions._demo import DemoOptions, run_demo
from trio_sessions._demo_ledger import Ledger, check_store
from trio_sessions._model import Message


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
    assert options == DemoOptions(duration=4.0, users=30, timeout=1.5, seed=7)

    code = await run_demo(options, postgres_url)

    out = capsys.readouterr().out
    assert code == 0, out
    summary = re.search(r"sessions\s+created ([\d,]+), expired ([\d,]+), ended ([\d,]+)", out)
    assert summary is not None, out
    created, expired, ended = (int(group.replace(",", "")) for group in summary.groups())
    assert created > 30 and expired > 0 and ended > 0, out
    assert re.search(r"update_last_activity p50 [\d.]+ ms, p99 [\d.]+ ms", out), out
    assert re.search(rf"^check passed: {created:,} sessions, [\d,]+ messages match$", out, re.M), out


async def test_demo_check_reports_what_postgres_lacks(postgres_url: str) -> None:
    """The check is not vacuous: a change the database lacks is reported."""
    config = RuntimeConfig(database_url=postgres_url)
    ledger = Ledger()
    async with open_runtime(config) as rt:
        session = ledger.created_session(await rt.create("u", "financeiro"))
        ledger.appended(await rt.append_message(session.id, "user", "oi"), "user", "oi")
    assert await check_store(postgres_url, config, ledger) == []

    newest = ledger.newest[session.id]
    ledger.observe(dataclasses.replace(newest, state="resolved", version=newest.version + 1))
    ledger.messages[session.id].append(Message(2, "assistant", "olá", newest.last_activity))
    problems = await check_store(postgres_url, config, ledger)

    assert sorted(problems) == [
        f"session {session.id}: 1 messages stored, 2 acknowledged; first difference at position 2",
        f"session {session.id}: stored row differs (acknowledged -> stored): "
        "state: 'resolved' -> 'active'; version: 3 -> 2",
    ]


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
        f"migrated {where}: applied 4 migrations: "
        "0001_initial.sql, 0002_hot_updates.sql, 0003_ownership.sql, 0004_one_session_per_chat.sql\n")
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
