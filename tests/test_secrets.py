"""No password of a database URL shows in a repr, an error message or a log line."""

from __future__ import annotations

import logging

import pytest
from loguru import logger

from trio_sessions import InvalidArgument, MemoryStore, RuntimeConfig, open_runtime
from trio_sessions._secrets import redact_url

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
    assert config.database_url == URL  # the value itself is whole, for the driver
    for shown in (repr(config), str(config), f"{config}", repr([config])):
        assert PASSWORD not in shown
        assert "alice:***@db.example.com" in shown


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
