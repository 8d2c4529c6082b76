"""Persistence sinks: remote stores every turn is mirrored to (Foundry threads, Zep memory).

The chat core knows sinks only through `Sink` and the registry filled from `settings.CHAT_SINKS`
(dotted class paths). A sink never sits on the response path: a turn only records that the sink
wants the new messages (`SinkState.wanted_seq`), and the background sender (`sessions_app.sync`)
calls the sink's async methods to deliver them.
"""

import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.core.signals import setting_changed
from django.db import connection
from django.dispatch import receiver
from django.utils.module_loading import import_string

from sessions_app.heap import freeze_long_lived

logger = logging.getLogger(__name__)


class SinkError(Exception):
    """A sink call failed; the sender retries it later with backoff."""


class RemoteNotFound(SinkError):
    """The remote thread does not exist (any more)."""


class RemoteThrottled(SinkError):
    """The sink asked us to slow down; retry no sooner than `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float | None):
        super().__init__(message)
        self.retry_after = retry_after


class AppendInterrupted(SinkError):
    """Appending a batch failed after `delivered_ids` (the first messages of the batch, in
    order) had been stored remotely; `__cause__` is the failure."""

    def __init__(self, delivered_ids: list[str], cause: Exception):
        super().__init__(str(cause))
        self.delivered_ids = delivered_ids
        self.cause = cause


@dataclass(frozen=True)
class SessionInfo:
    """What a sink may label a remote thread with."""

    user_id: str
    agent_id: str
    project_id: str
    session_id: str
    created_at: datetime

    @property
    def session_key(self) -> str:
        return f"{self.user_id}:{self.agent_id}:{self.project_id}:{self.session_id}"


@dataclass(frozen=True)
class OutgoingMessage:
    seq: int
    role: str
    content: str
    agent_id: str


@dataclass(frozen=True)
class RemoteMessage:
    remote_id: str
    role: str
    content: str
    # The local sequence number the message was sent with, where the sink keeps it.
    seq: int | None = None


@dataclass(frozen=True)
class RecentMessages:
    """The newest part of a remote thread, oldest first; `complete` when it is the whole thread."""

    messages: list[RemoteMessage]
    complete: bool


@dataclass(frozen=True)
class SinkStatus:
    """Whether the sink takes turns now, and why not when it does not."""

    active: bool
    reason: str


# Set by a paced sender (the one inside a server process, see sessions_app.sync.CpuPacer) for the
# deliveries it runs: an append that takes many remote calls (one per message on Foundry's classic
# threads) gives way to the turns between its calls, not only before it starts.
remote_call_pacer: ContextVar[Callable[[], Awaitable[None]] | None] = ContextVar(
    "remote_call_pacer", default=None
)


async def pace_remote_call() -> None:
    """A sink awaits this before each remote call of an append after the first: it returns at
    once, or when the sender delivering the append may use the CPU again."""
    pace = remote_call_pacer.get()
    if pace is not None:
        await pace()


class Sink:
    """One remote store. `name` keys its SinkState rows; `label` goes into log lines.

    `active()` is called on every chat turn: it must be cheap (no query per call).
    `session_field`, if set, names a ChatSession column that mirrors `SinkState.remote_id`.
    """

    name: str = ""
    label: str = ""
    session_field: str | None = None

    def status(self) -> SinkStatus:
        raise NotImplementedError

    def active(self) -> bool:
        return self.status().active

    def remote_kind(self, remote_id: str) -> str:
        """For operators: which API or flavour of the sink holds this remote thread ('' if the
        sink has only one)."""
        return ""

    async def create_remote(self, *, session: SessionInfo) -> str:
        """Create the session's remote thread; return its id."""
        raise NotImplementedError

    async def append(self, *, remote_id: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        """Store `messages` in order on the thread; return their remote ids. Raises
        AppendInterrupted when some but not all were stored. Awaits `pace_remote_call()`
        between its remote calls when it makes more than one."""
        raise NotImplementedError

    async def load(self, *, remote_id: str) -> list[RemoteMessage]:
        """Every message of the thread, oldest first."""
        raise NotImplementedError

    async def load_recent(self, *, remote_id: str, at_least: int) -> RecentMessages:
        """The newest messages of the thread, oldest first: at least `at_least` of them (all, in
        a shorter thread), in as few calls as the API allows. A chat turn waits for this one, so
        a sink whose API pages from the newest end overrides it; this default loads it all."""
        return RecentMessages(await self.load(remote_id=remote_id), complete=True)

    async def delete_remote(self, *, remote_id: str) -> None:
        """Delete the thread; one that is already gone counts as deleted."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Release clients and connections."""

    def warm_up(self) -> None:
        """Do the one-time work of a first remote call (imports, the first client), without
        calling the remote side, so that no user's turn waits for it. Called once per server
        process, in the background."""


_instances: dict[tuple[str, ...], tuple[Sink, ...]] = {}
_instances_lock = threading.Lock()


def _sink_instances(paths: tuple[str, ...]) -> tuple[Sink, ...]:
    # Made once per process under a lock: the first requests and the sender thread ask at the
    # same moment, and a sink made twice would hold clients that the other copy never closes.
    instances = _instances.get(paths)
    if instances is None:
        with _instances_lock:
            instances = _instances.get(paths)
            if instances is None:
                instances = _instances[paths] = tuple(import_string(path)() for path in paths)
    return instances


@receiver(setting_changed)
def _forget_sinks(**kwargs) -> None:
    # Sinks read their settings once; tests that override settings get fresh ones.
    with _instances_lock:
        _instances.clear()


def all_sinks() -> tuple[Sink, ...]:
    """Every configured sink, active or not."""
    return _sink_instances(tuple(settings.CHAT_SINKS))


def active_sinks() -> list[Sink]:
    """The sinks that take turns now (cheap: called on every turn)."""
    return [sink for sink in all_sinks() if sink.active()]


_warm_up_lock = threading.Lock()
_warm_up_thread: threading.Thread | None = None


def warm_up_sinks() -> None:
    """Warm the active sinks up in a background thread, once per process (SINK_WARM_UP)."""
    global _warm_up_thread
    if _warm_up_thread is not None or not settings.SINK_WARM_UP:
        return  # every connection asks; only the first takes the lock
    with _warm_up_lock:
        if _warm_up_thread is not None:
            return

        def run() -> None:
            # Only a head start: whatever fails here, the first real call does again.
            warmed = False
            try:
                for sink in active_sinks():
                    warmed = True
                    try:
                        sink.warm_up()
                    except Exception:
                        logger.exception("Warming up %s failed", sink.label)
            except Exception:
                logger.exception("Warming up the sinks failed")
            finally:
                connection.close()  # the flag's lookup may have opened one
            if warmed:
                # The SDKs' modules and first clients came after the start-up's freeze: about
                # 25,000 objects, which each full collection walked (13 ms of CPU, against 4 ms
                # with the flag off; every turn in flight waited for it).
                freeze_long_lived()

        _warm_up_thread = threading.Thread(target=run, name="sink-warm-up", daemon=True)
        _warm_up_thread.start()


_warm_up_waited_until: float | None = None


def warm_up_wait(timeout: float) -> None:
    """Wait for this process's warm-up to end, at most `timeout` seconds after the first call
    (later calls wait only for what is left of that, then not at all)."""
    global _warm_up_waited_until
    thread = _warm_up_thread
    if thread is None:
        return
    if _warm_up_waited_until is None:
        _warm_up_waited_until = time.monotonic() + timeout
    thread.join(max(0.0, _warm_up_waited_until - time.monotonic()))


def sink_get(name: str) -> Sink:
    for sink in all_sinks():
        if sink.name == name:
            return sink
    raise LookupError(f"no sink named {name!r}")
