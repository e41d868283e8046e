"""trio-sessions: an actor-style session manager for Trio, written behind to PostgreSQL."""

from loguru import logger as _logger

from ._config import RuntimeConfig as RuntimeConfig
from ._errors import ChatSessionExists as ChatSessionExists
from ._errors import ConfigurationError as ConfigurationError
from ._errors import InvalidArgument as InvalidArgument
from ._errors import Overloaded as Overloaded
from ._errors import RuntimeClosed as RuntimeClosed
from ._errors import SessionError as SessionError
from ._errors import SessionInactive as SessionInactive
from ._errors import SessionMoved as SessionMoved
from ._errors import SessionNotFound as SessionNotFound
from ._errors import StoreUnavailable as StoreUnavailable
from ._errors import VersionConflict as VersionConflict
from ._errors import WriteRejected as WriteRejected
from ._feed import FollowedEvents as FollowedEvents
from ._health import Health as Health
from ._memory import MemoryStore as MemoryStore
from ._metrics import MetricsSnapshot as MetricsSnapshot
from ._metrics import OperationStats as OperationStats
from ._model import EventPage as EventPage
from ._model import FeedEvent as FeedEvent
from ._model import Message as Message
from ._model import Note as Note
from ._model import Page as Page
from ._model import Session as Session
from ._model import SessionEvent as SessionEvent
from ._postgres import PostgresStore as PostgresStore
from ._runtime import SessionRuntime as SessionRuntime
from ._runtime import open_runtime as open_runtime
from ._secrets import SecretUrl as SecretUrl
from ._store import Acquired as Acquired
from ._store import Busy as Busy
from ._store import Joined as Joined
from ._store import ListQuery as ListQuery
from ._store import Store as Store
from ._store import WriteBatch as WriteBatch
from ._subscriptions import Subscription as Subscription

# A library never decides where its logs go: the application enables them.
_logger.disable("trio_sessions")

__all__ = [
    "Acquired", "Busy", "ChatSessionExists", "ConfigurationError", "EventPage", "FeedEvent",
    "FollowedEvents", "Health", "InvalidArgument", "Joined",
    "ListQuery",
    "MemoryStore",
    "Message", "MetricsSnapshot", "Note", "OperationStats", "Overloaded", "Page", "PostgresStore",
    "RuntimeClosed", "RuntimeConfig", "SecretUrl",
    "Session", "SessionError", "SessionEvent", "SessionInactive", "SessionMoved", "SessionNotFound",
    "SessionRuntime", "Store", "StoreUnavailable", "Subscription", "VersionConflict", "WriteBatch",
    "WriteRejected", "open_runtime",
]
