"""RuntimeConfig: defaults, validation naming the field, environment and TOML."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from trio_sessions import InvalidArgument, RuntimeConfig, SecretUrl, open_runtime


def test_defaults() -> None:
    config = RuntimeConfig()
    assert config.session_timeout == 1800.0
    assert config.max_messages == 50
    assert config.database_url is None


@pytest.mark.parametrize(("field", "value"), [
    ("session_timeout", 0), ("session_timeout", -1.0), ("session_timeout", math.nan),
    ("session_timeout", "30"), ("flush_interval", math.inf), ("max_messages", 0),
    ("max_messages", 2.0), ("max_resident", True), ("max_pending", -3), ("pool_min", 11),
    ("retry_initial_delay", 10.0), ("database_url", ""), ("database_url", "x\x00y"),
    ("alert_pending_fraction", 1.5), ("flush_concurrency", 0),
])
def test_invalid_values_name_the_field(field: str, value: object) -> None:
    with pytest.raises(InvalidArgument) as info:
        RuntimeConfig(**{field: value})  # type: ignore[arg-type]
    assert info.value.field == field
    assert field in str(info.value)


def test_ints_are_accepted_for_durations() -> None:
    config = RuntimeConfig(session_timeout=60, flush_interval=1)
    assert isinstance(config.session_timeout, float) and config.session_timeout == 60.0


def test_from_env() -> None:
    config = RuntimeConfig.from_env({
        "DATABASE_URL": "postgresql://db/x",
        "SESSION_TIMEOUT_MINUTES": "5",
        "TRIO_SESSIONS_MAX_RESIDENT": "7",
        "TRIO_SESSIONS_FLUSH_INTERVAL": "0.5",
    })
    assert config.database_url == SecretUrl("postgresql://db/x")
    assert config.session_timeout == 300.0
    assert (config.max_resident, config.flush_interval) == (7, 0.5)


def test_from_env_rejects_garbage() -> None:
    with pytest.raises(InvalidArgument) as info:
        RuntimeConfig.from_env({"TRIO_SESSIONS_MAX_RESIDENT": "many"})
    assert info.value.field == "TRIO_SESSIONS_MAX_RESIDENT"
    with pytest.raises(InvalidArgument) as info:
        RuntimeConfig.from_env({"SESSION_TIMEOUT_MINUTES": "-1"})
    assert info.value.field == "SESSION_TIMEOUT_MINUTES"


def test_from_file(tmp_path: Path) -> None:
    path = tmp_path / "sessions.toml"
    path.write_text('[trio_sessions]\nsession_timeout = 120\nmax_messages = 20\ndata_dir = "/tmp/pg"\n')
    config = RuntimeConfig.from_file(path)
    assert (config.session_timeout, config.max_messages, config.data_dir) == (120.0, 20, "/tmp/pg")
    path.write_text("max_resident = 3\n")
    assert RuntimeConfig.from_file(path).max_resident == 3


def test_from_file_rejects_unknown_keys_and_bad_files(tmp_path: Path) -> None:
    path = tmp_path / "sessions.toml"
    path.write_text("max_residents = 3\n")
    with pytest.raises(InvalidArgument) as info:
        RuntimeConfig.from_file(path)
    assert info.value.field == "max_residents"
    path.write_text("this is not toml")
    with pytest.raises(InvalidArgument):
        RuntimeConfig.from_file(path)
    with pytest.raises(InvalidArgument):
        RuntimeConfig.from_file(tmp_path / "missing.toml")


def test_data_dir_default_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert RuntimeConfig().resolved_data_dir() == tmp_path / "trio-sessions" / "postgres"
    assert RuntimeConfig(data_dir="~/pg").resolved_data_dir() == Path("~/pg").expanduser()


@pytest.mark.parametrize(("environ", "named"), [
    ({"SESSION_TIMEOUT_MINUTES": "-5"}, "SESSION_TIMEOUT_MINUTES"),
    ({"TRIO_SESSIONS_SESSION_TIMEOUT": "-5"}, "TRIO_SESSIONS_SESSION_TIMEOUT"),
    ({"TRIO_SESSIONS_MAX_MESSAGES": "0"}, "TRIO_SESSIONS_MAX_MESSAGES"),
    ({"TRIO_SESSIONS_CALL_TIMEOUT": "nan"}, "TRIO_SESSIONS_CALL_TIMEOUT"),
    ({"TRIO_SESSIONS_AUTO_MIGRATE": "maybe"}, "TRIO_SESSIONS_AUTO_MIGRATE"),
    ({"DATABASE_URL": "mysql://x/y"}, "DATABASE_URL"),
])
def test_env_errors_name_the_variable(environ: dict[str, str], named: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        RuntimeConfig.from_env(environ)
    assert info.value.field == named
    assert "-300" not in str(info.value)


def test_a_misspelled_variable_is_an_error_listing_the_known_ones() -> None:
    with pytest.raises(InvalidArgument) as info:
        RuntimeConfig.from_env({"TRIO_SESSIONS_MAX_RESIDNET": "3"})
    assert info.value.field == "TRIO_SESSIONS_MAX_RESIDNET"
    assert "TRIO_SESSIONS_MAX_RESIDENT" in str(info.value)


def test_optional_fields_and_booleans_from_the_environment() -> None:
    config = RuntimeConfig.from_env({"TRIO_SESSIONS_CALL_TIMEOUT": "none",
                                     "TRIO_SESSIONS_AUTO_MIGRATE": "false"})
    assert config.call_timeout is None and config.auto_migrate is False
    assert RuntimeConfig.from_env({"TRIO_SESSIONS_CALL_TIMEOUT": "2.5"}).call_timeout == 2.5
    assert RuntimeConfig().auto_migrate is True


def test_prefixed_variables_win_over_the_plain_ones() -> None:
    config = RuntimeConfig.from_env({
        "DATABASE_URL": "postgresql://plain/db", "TRIO_SESSIONS_DATABASE_URL": "postgresql://ours/db",
        "SESSION_TIMEOUT_MINUTES": "5", "TRIO_SESSIONS_SESSION_TIMEOUT": "42",
    })
    assert (config.database_url, config.session_timeout) == (SecretUrl("postgresql://ours/db"), 42.0)


def test_from_file_errors_name_the_key_and_stray_top_level_keys(tmp_path: Path) -> None:
    path = tmp_path / "sessions.toml"
    path.write_text("[trio_sessions]\nmax_messages = 0\n")
    with pytest.raises(InvalidArgument) as info:
        RuntimeConfig.from_file(path)
    assert info.value.field == "trio_sessions.max_messages"
    path.write_text("max_resident = 3\n[trio_sessions]\nmax_messages = 5\n")
    with pytest.raises(InvalidArgument) as info:
        RuntimeConfig.from_file(path)
    assert info.value.field == "max_resident"
    path.write_text("[tool.other]\nx = 1\n[trio_sessions]\nauto_migrate = false\n")
    assert RuntimeConfig.from_file(path).auto_migrate is False


def test_config_stores_plain_values() -> None:
    class Lying(int):
        def __index__(self) -> int:
            return 0

    config = RuntimeConfig(max_messages=Lying(7))
    assert type(config.max_messages) is int and config.max_messages == 7


async def test_database_url_read_at_start_is_checked_and_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """A runtime given no database_url reads DATABASE_URL, checked as the field is, naming the variable."""
    monkeypatch.setenv("DATABASE_URL", "mysql://app:s3cret@db/app")
    with pytest.raises(InvalidArgument) as raised:
        async with open_runtime(RuntimeConfig()):
            pass
    assert raised.value.field == "DATABASE_URL" and "postgresql://" in str(raised.value)
    assert "s3cret" not in str(raised.value)
