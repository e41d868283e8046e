"""Tools for property-based concurrency tests of code that uses trio-sessions.

- `SessionModel`: the sequential specification of the session API; the same
  results and errors as the runtime for any sequence of calls at given times.
- `History` and `check_linearizable`/`assert_linearizable`: record concurrent
  calls and decide whether some sequential order explains every answer;
  `check_arrival_order`: calls on one session applied in the order they
  reached the runtime (as `run_workload` numbers them).
- `FaultyStore`: wraps any store and injects transient failures, latency,
  outages and commits of unknown outcome, reproducibly from a seed.
- Hypothesis strategies for arguments (`hostile_text`, `metadata`, ...) and
  whole calls (`session_calls`), and `run_workload`, which lets several tasks
  make random calls at once.
- `run_on_virtual_time`: a scenario on `MockClock` and `MemoryStore`.

Importing this module imports Hypothesis (`pip install "trio-sessions[testing]"`);
the library itself never does.
"""

# First, so that without Hypothesis the error names the extra that brings it.
from . import _requirement  # noqa: F401
from ._calls import AddNote as AddNote
from ._calls import AppendMessage as AppendMessage
from ._calls import Call as Call
from ._calls import Context as Context
from ._calls import Create as Create
from ._calls import Delete as Delete
from ._calls import End as End
from ._calls import Get as Get
from ._calls import Touch as Touch
from ._calls import Update as Update
from ._faulty import FaultStatistics as FaultStatistics
from ._faulty import FaultyStore as FaultyStore
from ._history import History as History
from ._history import Linearization as Linearization
from ._history import NotLinearizable as NotLinearizable
from ._history import Operation as Operation
from ._history import RecordingRuntime as RecordingRuntime
from ._history import assert_linearizable as assert_linearizable
from ._history import check_arrival_order as check_arrival_order
from ._history import check_linearizable as check_linearizable
from ._reference import ModelState as ModelState
from ._reference import SessionModel as SessionModel
from ._strategies import agents as agents
from ._strategies import chat_ids as chat_ids
from ._strategies import hostile_text as hostile_text
from ._strategies import impostors as impostors
from ._strategies import json_values as json_values
from ._strategies import limits as limits
from ._strategies import message_contents as message_contents
from ._strategies import metadata as metadata
from ._strategies import roles as roles
from ._strategies import timeouts as timeouts
from ._strategies import user_ids as user_ids
from ._strategies import valid_text as valid_text
from ._virtual import run_on_virtual_time as run_on_virtual_time
from ._workload import run_workload as run_workload
from ._workload import session_calls as session_calls

__all__ = [
    "AddNote", "AppendMessage", "Call", "Context", "Create", "Delete", "End", "FaultStatistics",
    "FaultyStore", "Get", "History", "Linearization", "ModelState", "NotLinearizable", "Operation",
    "RecordingRuntime", "SessionModel", "Touch", "Update", "agents", "assert_linearizable",
    "chat_ids", "check_arrival_order", "check_linearizable", "hostile_text", "impostors", "json_values",
    "limits", "message_contents",
    "metadata", "roles", "run_on_virtual_time", "run_workload", "session_calls", "timeouts",
    "user_ids", "valid_text",
]
