"""Every Python block of README.md and docs/*.md runs, so an example can never rot.

The convention (the README states it): each ```python block runs as a
script of its own, with `DATABASE_URL` set to a fresh database of the test
server, so that `open_runtime()` without a store uses it. Functions named
`test_*` that a block defines are then called, as pytest would. A block that
serves for ever runs its entry point only under `if __name__ == "__main__":`
(blocks run under another name here), and a test of its own drives it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
import trio

from trio_sessions._postgres import create_database, drop_database

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.M | re.S)


def python_blocks() -> list[tuple[str, str]]:
    """(`file:line`, code) of every ```python block."""
    found = []
    for path in DOCUMENTS:
        text = path.read_text(encoding="utf-8")
        for match in BLOCK.finditer(text):
            line = text.count("\n", 0, match.start(1)) + 1
            found.append((f"{path.relative_to(ROOT)}:{line}", match.group(1)))
    return found


BLOCKS = python_blocks()


@pytest.fixture
def database_url(postgres_server_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """`DATABASE_URL` set to a fresh database (sync: the blocks call `trio.run` themselves)."""
    name = f"t_{uuid4().hex}"
    url = trio.run(create_database, postgres_server_url, name)
    monkeypatch.setenv("DATABASE_URL", url)
    try:
        yield url
    finally:
        trio.run(drop_database, postgres_server_url, name)


def run_block(where: str, code: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    exec(compile(code, where, "exec"), namespace)  # our own documentation, nothing from outside
    for name, value in list(namespace.items()):
        if name.startswith("test_") and callable(value):
            value()
    return namespace


def test_the_documents_have_python_blocks() -> None:
    assert len([where for where, _ in BLOCKS if where.startswith("README.md")]) >= 3


@pytest.mark.parametrize(("where", "code"), BLOCKS, ids=[where for where, _ in BLOCKS])
def test_every_python_block_runs(where: str, code: str, database_url: str) -> None:
    run_block(where, code)


def test_the_readme_points_nowhere_outside_the_repository() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)]+)\)", text):
        if re.match(r"https?://", target):
            continue
        assert not target.startswith(("/", "..")), target
        assert (ROOT / target.split("#")[0]).exists(), target


def test_the_testing_kit_names_its_extra_when_hypothesis_is_missing() -> None:
    blocked = "import sys; sys.modules['hypothesis'] = None; import trio_sessions.testing"
    run = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, check=False)
    assert run.returncode == 1
    assert run.stderr.splitlines()[-1] == (
        'ImportError: trio_sessions.testing needs Hypothesis: pip install "trio-sessions[testing]"')


async def http(port: int, method: str, path: str, body: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """One HTTP/1.0 request (so the answer is not chunked) to 127.0.0.1:`port`; its status and JSON."""
    payload = json.dumps(body).encode()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"{method} {path} HTTP/1.0\r\nHost: test\r\n"
                              f"Content-Length: {len(payload)}\r\nContent-Type: application/json\r\n"
                              "\r\n".encode() + payload)
        answer = b""
        while chunk := await stream.receive_some():
            answer += chunk
    head, _, content = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(content)


def test_the_web_service_recipe_serves_and_flushes_on_stop(database_url: str) -> None:
    [(where, code)] = [(where, code) for where, code in BLOCKS if "hypercorn" in code]
    serve_sessions = run_block(where, code)["serve_sessions"]

    async def main() -> None:
        from trio_sessions import PostgresStore

        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            [bound] = await nursery.start(serve_sessions, "127.0.0.1:0", stop.wait)
            port = int(bound.rsplit(":", 1)[1])
            status, made = await http(port, "POST", "/sessions", {"user_id": "ana", "agent": "geral"})
            assert (status, made["version"]) == (200, 1)
            status, added = await http(port, "POST", f"/sessions/{made['id']}", {"content": "oi"})
            assert (status, added) == (200, {"id": made["id"], "version": 2, "messages": 1})
            assert (await http(port, "POST", f"/sessions/{uuid4()}", {"content": "oi"}))[0] == 404
            assert (await http(port, "POST", "/sessions/not-an-id", {"content": "oi"}))[0] == 400
            stop.set()
        # Stopping the server closed the runtime, which committed the message.
        store = PostgresStore(database_url)
        async with store.connect():
            loaded = await store.load(UUID(made["id"]), messages=5)
        assert loaded is not None and [m.content for m in loaded[1]] == ["oi"]

    trio.run(main)
