"""check_linearizable: histories it once judged wrongly, and a brute-force cross-check.

The hand-made histories below are the three ways the checker disagreed with
an exhaustive search (tests/brute_force.py); the Hypothesis test keeps the
two in agreement over many small recorded histories, corrupted or not.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_sessions import RuntimeConfig, SessionInactive
from trio_sessions.testing import (
    AppendMessage,
    Create,
    End,
    Get,
    History,
    Operation,
    SessionModel,
    Touch,
    Update,
    check_linearizable,
)

from .brute_force import CONFIG as BRUTE_CONFIG
from .brute_force import CORRUPTIONS, KINDS, Program, Step, brute_force_linearizable, corrupt, record

CONFIG = RuntimeConfig(session_timeout=60.0)
SID = uuid.UUID("6c3f1a52-0d4e-4b8e-9a57-2f1c9d0e7b11")


def _on_virtual_time(build: Callable[[History, SessionModel], None]) -> History:
    """A history written by hand (answers from the model at chosen times) in a MockClock run."""

    async def main() -> History:
        await trio.lowlevel.checkpoint()
        history = History()
        history.mark()  # fixes the run's wall-clock mapping
        build(history, SessionModel(CONFIG))
        return history

    return trio.run(main, clock=trio.testing.MockClock())


def _add(history: History, call: Any, invoked: int, invoked_at: float, returned: int | None = None,
         returned_at: float | None = None, outcome: Any = None) -> None:
    history.operations.append(Operation(call, SID, invoked, invoked_at, returned, returned_at, outcome,
                                        answered=returned is not None))


def test_a_cancelled_call_may_take_effect_at_an_instant_a_later_answer_shows() -> None:
    # A durable update waits for the session to load (until 0.705), is applied
    # there, and is cancelled while it waits for the commit. A later get shows
    # it. The checker used to try it only at its invocation and the deadline.
    def build(history: History, model: SessionModel) -> None:
        created = model.create("ana", "geral", session_id=SID, now=0.0)
        _add(history, Create("ana", "geral"), 0, 0.0, 1, 0.0, created)
        _add(history, Update(SID, (("state", "paid"),), None, True), 2, 0.5)  # cancelled
        updated = model.update(SID, now=0.705, state="paid")
        _add(history, Get(SID), 3, 0.8, 4, 0.8, updated)

    history = _on_virtual_time(build)
    assert brute_force_linearizable(history, CONFIG)
    assert check_linearizable(history, CONFIG).ok


def test_time_never_runs_backwards_along_an_order() -> None:
    # A durable append applied at 1.0 returns at 1.3, after its commit. A get
    # invoked at 1.2, during the commit wait, answers the state before the
    # append: stale, since the append took effect at 1.0. The checker used to
    # accept it, placing the get at 1.2 before the append at 1.0.
    def build(history: History, model: SessionModel) -> None:
        created = model.create("ana", "geral", session_id=SID, now=0.0)
        _add(history, Create("ana", "geral"), 0, 0.0, 1, 0.0, created)
        appended = model.append_message(SID, "user", "oi", now=1.0)
        _add(history, AppendMessage(SID, "user", "oi", True), 2, 1.0, 5, 1.3, appended)
        _add(history, Get(SID), 3, 1.2, 4, 1.25, created)

    history = _on_virtual_time(build)
    assert not brute_force_linearizable(history, CONFIG)
    result = check_linearizable(history, CONFIG)
    assert not result.ok
    assert "Longest explained prefix" in result.counterexample


def test_an_inactive_answer_must_give_the_right_reason() -> None:
    def build(history: History, model: SessionModel) -> None:
        created = model.create("ana", "geral", session_id=SID, now=0.0)
        _add(history, Create("ana", "geral"), 0, 0.0, 1, 0.0, created)
        ended = model.end(SID, now=1.0, reason="resolved")
        _add(history, End(SID, "resolved"), 2, 1.0, 3, 1.0, ended)
        _add(history, Touch(SID), 4, 2.0, 5, 2.0, SessionInactive(SID, "expired"))

    history = _on_virtual_time(build)
    assert not brute_force_linearizable(history, CONFIG)
    assert not check_linearizable(history, CONFIG).ok
    history.operations[-1].outcome = SessionInactive(SID, "resolved")
    assert check_linearizable(history, CONFIG).ok


# ------------------------------------------------------- brute-force cross-check

steps = st.builds(Step, kind=st.integers(0, len(KINDS) - 1), durable=st.booleans(),
                  cancel_after=st.sampled_from([None, 0.0, 0.05, 0.2, 0.5]),
                  pause=st.sampled_from([0.0, 0.1, 0.5, 1.5]))
programs = st.builds(Program, timeout=st.sampled_from([600.0, 1.0, 2.0]),
                     tasks=st.lists(st.lists(steps, min_size=1, max_size=2).map(tuple),
                                    min_size=2, max_size=3).map(tuple),
                     seed=st.integers(0, 999))


@settings(max_examples=6 * (settings().max_examples or 30))
@given(program=programs, which=st.integers(0, 9), how=st.integers(0, len(CORRUPTIONS) - 1),
       scheduling=st.random_module())
def test_the_checker_agrees_with_a_brute_force_search(program: Program, which: int, how: int,
                                                      scheduling: Any) -> None:
    history = record(program)
    for candidate in (history, corrupt(history, which, how)):
        if candidate is None:
            continue
        expected = brute_force_linearizable(candidate, BRUTE_CONFIG)
        found = check_linearizable(candidate, BRUTE_CONFIG)
        assert found.ok == expected, (
            f"brute force says {expected}, the checker {found.ok}:\n{found.counterexample}\n"
            + "\n".join(op.describe() for op in candidate.operations))


def test_the_brute_force_itself_sees_a_doctored_version() -> None:
    history = record(Program(600.0, ((Step(0), Step(1)), (Step(2),)), seed=1))
    assert brute_force_linearizable(history, BRUTE_CONFIG)
    doctored = corrupt(history, 0, CORRUPTIONS.index("version"))
    assert doctored is not None and not brute_force_linearizable(doctored, BRUTE_CONFIG)
