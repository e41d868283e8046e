"""No password of a database URL shows in a repr, an error message or a log line."""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from loguru import logger

from trio_sessions import InvalidArgument, MemoryStore, PostgresStore, RuntimeConfig, SecretUrl, open_runtime
from trio_sessions._secrets import redact_url

from .test_start_errors import diagnosing_sink

PASSWORD = "Sup3rS3cret"
URL = f"postgresql://alice:{PASSWORD}@db.example.com:5432/sessions?sslmode=require"


def test_redact_url() -> None:
    assert redact_url(URL) == "postgresql://alice:***@db.example.com:5432/sessions?sslmode=require"
    assert redact_url("postgresql://u:pa/ss@h/d") == "postgresql://u:***@h/d"
    assert redact_url("postgresql://u:pa?ss@h/d") == "postgresql://u:***@h/d"  # an unescaped "?"
    assert redact_url("postgresql://u@h/d?password=x&a=1") == "postgresql://u@h/d?password=***&a=1"
    assert redact_url("postgresql://u@h/d") == "postgresql://u@h/d"


def test_config_repr_and_str_redact_the_password() -> None:
    config = RuntimeConfig(database_url=URL)
    url = config.database_url
    assert isinstance(url, SecretUrl) and url.reveal() == URL  # whole, for the driver
    for shown in (repr(config), str(config), f"{config}", repr([config]), repr(url), str(url), f"{url}",
                  repr({"url": url})):
        assert PASSWORD not in shown
        assert "alice:***@db.example.com" in shown
    # What the config returns goes back in as it is.
    assert RuntimeConfig(database_url=url) == config == dataclasses.replace(config, pool_max=10)
    assert PostgresStore(url).__repr__() == PostgresStore(URL).__repr__()
    assert url == SecretUrl(URL) and hash(url) == hash(SecretUrl(URL)) and url != URL


def test_a_secret_url_takes_only_an_exact_str() -> None:
    class Lying(str):
        def __str__(self) -> str:
            return "postgresql://someone@else/db"

    with pytest.raises(TypeError):
        SecretUrl(Lying(URL))
    # Through the config a subclass is read for its characters, as every text argument is.
    url = RuntimeConfig(database_url=Lying(URL)).database_url
    assert isinstance(url, SecretUrl) and url.reveal() == URL and type(url.reveal()) is str


@pytest.mark.parametrize("url", [
    f"postgresql://alice:{PASSWORD}/x@db/sessions",   # an unescaped "/" in the password
    f"postgresql://alice:{PASSWORD}@x@db/sessions",   # an unescaped "@"
    f"mysql://alice:{PASSWORD}@db/sessions",
    f"postgresql://alice:{PASSWORD}@db:port/sessions",
    f"alice:{PASSWORD}@db/sessions",
])
def test_malformed_urls_are_invalid_argument_without_the_password(url: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        RuntimeConfig(database_url=url)
    assert info.value.field == "database_url"
    assert PASSWORD not in str(info.value)
    with pytest.raises(InvalidArgument) as info:
        RuntimeConfig.from_env({"DATABASE_URL": url})
    assert info.value.field == "DATABASE_URL" and PASSWORD not in str(info.value)


async def test_a_run_with_loguru_enabled_never_logs_the_password(caplog: pytest.LogCaptureFixture) -> None:
    logger.enable("trio_sessions")
    sink = logger.add(caplog.handler, level="DEBUG", diagnose=True, backtrace=True)
    try:
        with caplog.at_level(logging.DEBUG):
            async with open_runtime(RuntimeConfig(database_url=URL), store=MemoryStore()) as rt:
                logger.info("config {}", rt.config)
                s = await rt.create("u1", "max")
                await rt.append_message(s.id, "user", "hi")
                try:
                    raise RuntimeError("boom")
                except RuntimeError:
                    config = rt.config  # noqa: F841  a local the diagnose output shows
                    logger.exception("failed with {}", rt.config)
    finally:
        logger.remove(sink)
        logger.disable("trio_sessions")
    assert "config RuntimeConfig(" in caplog.text
    assert PASSWORD not in caplog.text


def test_a_bad_setting_beside_the_url_never_shows_the_password_in_a_diagnosing_log(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The environment and the TOML table hold the URL as text: the frames reading them once
    # named them on the line that raised (loguru's diagnose prints each name's repr; the
    # repr of os.environ is every variable). Nothing here names the URL on a line that raises.
    toml = tmp_path / "settings.toml"
    toml.write_text(f'[trio_sessions]\ndatabase_url = "{URL}"\npool_max = "many"\n')
    unknown = tmp_path / "unknown.toml"
    unknown.write_text(f'[trio_sessions]\ndatabase_url = "{URL}"\npool_maxx = 3\n')
    environments = [
        {"DATABASE_URL": URL, "TRIO_SESSIONS_POOL_MAX": "many"},
        {"TRIO_SESSIONS_DATABASE_URL": URL, "TRIO_SESSIONS_POOL_MIN": "20"},
        {"DATABASE_URL": URL, "SESSION_TIMEOUT_MINUTES": "-5"},
        {"DATABASE_URL": URL, "TRIO_SESSIONS_POOL_MAXX": "3"},
    ]
    failures = 0
    with diagnosing_sink() as written:
        for environment in [*environments, toml, unknown]:
            with monkeypatch.context() as patched:
                if isinstance(environment, dict):
                    for name, value in environment.items():
                        patched.setenv(name, value)
                    read: Callable[[], object] = RuntimeConfig.from_env
                else:
                    read = functools.partial(RuntimeConfig.from_file, environment)
                try:
                    read()
                except InvalidArgument:
                    logger.exception("bad settings")
                    failures += 1
    log = "".join(written)
    assert failures == len(environments) + 2 and "Traceback" in log
    assert PASSWORD not in log


def test_a_url_read_from_the_environment_is_checked_as_text() -> None:
    for environment in ({"DATABASE_URL": URL + "\x00"}, {"TRIO_SESSIONS_DATABASE_URL": URL + "\x00"}):
        with pytest.raises(InvalidArgument, match="NUL") as info:
            RuntimeConfig.from_env(environment)
        assert info.value.field in environment and PASSWORD not in str(info.value)
    unset = RuntimeConfig.from_env({"TRIO_SESSIONS_DATABASE_URL": "none", "DATABASE_URL": ""})
    assert unset.database_url is None
