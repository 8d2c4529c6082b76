"""The background sender: delivers pending turns to the sinks, off the response path.

Work lives in the database (SinkState, SinkReceipt, RemoteDeletion), never in memory, so a
sender killed at any point loses nothing: its claims expire after SYNC_LEASE_S and another sender
(or the same one restarted) carries on. Per session, messages go out in order, in batches of
SYNC_BATCH_SIZE; each delivered message gets a receipt with its remote id, and a batch cut short
by a crash is reconciled against the remote thread before anything is sent again, so nothing is
sent twice. Failures back off exponentially with jitter (at least the Retry-After of a 429), and a
circuit breaker per sink (SinkHealth, shared through the database) stops calling a sink that
keeps failing. A session pointed at an existing remote thread has that thread imported first,
before its own messages (`Sender._import_history`). Any number of senders may run at once: on
PostgreSQL they claim rows with SELECT ... FOR UPDATE SKIP LOCKED; on SQLite writers are
serialised anyway.

In a server process the sender runs in a thread (`start_in_process_sender`, on when
SYNC_IN_PROCESS); `manage.py foundry_sync` runs it as a worker process.
"""

import asyncio
import atexit
import functools
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections, transaction
from django.db.models import F, Q
from django.db.transaction import TransactionManagementError
from django.utils import timezone

from sessions_app import sql
from sessions_app.models import (
    ChatMessage,
    ChatSession,
    RemoteDeletion,
    SinkHealth,
    SinkReceipt,
    SinkState,
)
from sessions_app.sinks import (
    AppendInterrupted,
    OutgoingMessage,
    RemoteMessage,
    RemoteNotFound,
    RemoteThrottled,
    SessionInfo,
    Sink,
    SinkError,
    all_sinks,
    remote_call_pacer,
)

logger = logging.getLogger(__name__)


def db(func):
    """`func` (ORM code) as an awaitable that runs in a worker thread, closing its connection
    (returning it to the pool) before and after.

    Use it instead of channels' database_sync_to_async, which closes connections outside the
    call's copy of the context: asgiref re-homes Django's connection storage into that copy,
    so the connection the call used was still open after channels' close (seen under the
    PostgreSQL pool: each call kept one checked out for good).
    """

    def call(*args, **kwargs):
        close_old_connections()
        try:
            return func(*args, **kwargs)
        finally:
            close_old_connections()

    return sync_to_async(call, thread_sensitive=False)


def backoff_delay(attempts: int, retry_after: float | None = None) -> float:
    """Exponential backoff with full jitter over its upper half; never less than Retry-After."""
    ceiling = min(settings.SYNC_BACKOFF_MAX_S, settings.SYNC_BACKOFF_BASE_S * 2 ** (attempts - 1))
    delay = ceiling * random.uniform(0.5, 1.0)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


# ---- database side ---------------------------------------------------------------------------


def _claimable(now) -> Q:
    return Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)


def breaker_allows(sink_name: str) -> int:
    """How many sessions the sink's breaker lets a sender claim now: 0 while open, 1 while
    half-open (cool-down over after repeated failures), else SYNC_CLAIM_LIMIT."""
    health, _ = SinkHealth.objects.get_or_create(sink=sink_name)
    if health.open_until and health.open_until > timezone.now():
        return 0
    if health.consecutive_failures >= settings.SYNC_BREAKER_THRESHOLD:
        return 1
    return settings.SYNC_CLAIM_LIMIT


def _due_states(sink_name: str, now):
    """The sink's pending states that no sender holds and whose backoff is over."""
    return SinkState.objects.pending().filter(
        _claimable(now), sink=sink_name, next_attempt_at__lte=now
    )


def has_due_states(sink_name: str, now) -> bool:
    """A read (no write lock) that tells whether claiming is worth a write transaction."""
    return _due_states(sink_name, now).only("id").exists()


def claim_states(*, sink_name: str, worker: str, limit: int) -> list[SinkState]:
    """Lease up to `limit` sessions with messages due for the sink, the longest due first. A
    session importing another sink's thread waits for it: its seqs are about to move.

    The claim is one statement (_claim_sql): on SQLite its transaction holds the lock that
    every chat turn waits for, and the ORM's two statements, built inside it, held it 2-12 ms
    in a server short of CPU. The rows are read after it, theirs by then."""
    now = timezone.now()
    adapt = sql.db().ops.adapt_datetimefield_value
    lease_end = now + timedelta(seconds=settings.SYNC_LEASE_S)
    # In a transaction of its own: on SQLite that queues it on the process's writer lock as
    # the turns' are (chatproject.sqlite), instead of polling in SQLite's busy handler while
    # a turn that finds it there polls too.
    with transaction.atomic():
        rows = sql.fetch_all(
            _claim_sql(),
            [worker, adapt(lease_end), sink_name, adapt(now), adapt(now), sink_name, limit],
        )
    ids = [row[0] for row in rows]
    if not ids:
        return []
    return list(SinkState.objects.filter(id__in=ids, claimed_by=worker).select_related("session"))


@functools.cache
def _claim_sql() -> str:
    """UPDATE ... WHERE id IN (the due states: SinkState.objects.pending() and _due_states, in
    SQL) RETURNING id. On PostgreSQL the rows another sender is claiming are skipped, not
    waited for."""
    state, session = sql.table(SinkState), sql.table(ChatSession)
    col = functools.partial(sql.column, SinkState)

    def due(name: str) -> str:
        return f"due.{col(name)}"

    skip_locked = (
        " FOR UPDATE OF due SKIP LOCKED"
        if sql.db().features.has_select_for_update_skip_locked
        else ""
    )
    import_from = f"s.{sql.column(ChatSession, 'history_import_from')}"
    return (
        f"UPDATE {state} SET {col('claimed_by')} = %s, {col('claimed_until')} = %s "
        f"WHERE {col('id')} IN (SELECT {due('id')} FROM {state} due "
        f"JOIN {session} s ON s.{sql.column(ChatSession, 'id')} = {due('session_id')} "
        f"WHERE {due('sink')} = %s AND {due('wanted_seq')} > {due('delivered_seq')} "
        f"AND ({due('claimed_until')} IS NULL OR {due('claimed_until')} < %s) "
        f"AND {due('next_attempt_at')} <= %s "
        f"AND ({import_from} = '' OR {import_from} = %s) "
        f"ORDER BY {due('next_attempt_at')} LIMIT %s{skip_locked}) "
        f"RETURNING {col('id')}"
    )


@transaction.atomic
def claim_deletions(*, sink_name: str, worker: str, limit: int) -> list[RemoteDeletion]:
    now = timezone.now()
    ids = list(
        RemoteDeletion.objects.select_for_update(skip_locked=True)
        .filter(_claimable(now), sink=sink_name, next_attempt_at__lte=now)
        .order_by("next_attempt_at")
        .values_list("id", flat=True)[:limit]
    )
    RemoteDeletion.objects.filter(id__in=ids).update(
        claimed_by=worker, claimed_until=now + timedelta(seconds=settings.SYNC_LEASE_S)
    )
    return list(RemoteDeletion.objects.filter(id__in=ids))


def session_info(session: ChatSession) -> SessionInfo:
    return SessionInfo(
        user_id=str(session.owner_id),
        agent_id=session.agent_id,
        project_id=session.project_id,
        session_id=session.session_id,
        created_at=session.created_at,
    )


class ClaimLost(Exception):
    """Another sender holds the row now (our lease expired): stop touching it."""


def _owned(state: SinkState, worker: str):
    return SinkState.objects.filter(pk=state.pk, claimed_by=worker)


# Making a session's thread, a sender's first write for each new session, is SQL built once, not
# the ORM: on SQLite the transaction holds the write lock that every chat turn waits for, and the
# ORM's statements took 2-3 ms of CPU in it (seen held 35 ms by a server short of CPU).


def _session_lock() -> str:
    """The clause that locks a session row read inside a transaction, as a chat turn does
    (none on SQLite, whose write transaction excludes the others anyway). NO KEY: a message's
    foreign-key check (FOR KEY SHARE) need not wait for it."""
    features = sql.db().features
    if not features.has_select_for_update:
        return ""
    return " FOR NO KEY UPDATE" if features.has_select_for_no_key_update else " FOR UPDATE"


@functools.cache
def _point_at_sql(session_field: str | None) -> tuple[str, str | None, str, str]:
    session_id = sql.column(ChatSession, "id")
    state = functools.partial(sql.column, SinkState)
    return (
        f"SELECT 1 FROM {sql.table(ChatSession)} WHERE {session_id} = %s{_session_lock()}",
        (
            f"UPDATE {sql.table(ChatSession)} SET {sql.column(ChatSession, session_field)} = %s "
            f"WHERE {session_id} = %s"
            if session_field
            else None
        ),
        f"DELETE FROM {sql.table(SinkReceipt)} WHERE {sql.column(SinkReceipt, 'state_id')} = %s",
        f"UPDATE {sql.table(SinkState)} SET {state('remote_id')} = %s, "
        f"{state('delivered_seq')} = 0, {state('inflight_seq')} = NULL WHERE {state('id')} = %s",
    )


def point_at(*, state: SinkState, sink: Sink, remote_id: str | None) -> bool:
    """Make `remote_id` (or none) the session's thread on the sink, nothing delivered there yet.
    Call inside a transaction. False if the session no longer exists."""
    if not sql.db().in_atomic_block:  # as the ORM's select_for_update refuses
        raise TransactionManagementError("point_at runs inside a transaction")
    lock_session, set_field, forget_receipts, reset_state = _point_at_sql(sink.session_field)
    # The session row is locked first, as a chat turn locks it, so the two never deadlock.
    if sql.fetch_one(lock_session, [state.session_id]) is None:
        return False
    if set_field:
        sql.execute(set_field, [remote_id, state.session_id])
    sql.execute(forget_receipts, [state.pk])
    sql.execute(reset_state, [remote_id, state.pk])
    return True


@functools.cache
def _owned_sql() -> str:
    col = functools.partial(sql.column, SinkState)
    return (
        f"SELECT 1 FROM {sql.table(SinkState)} WHERE {col('id')} = %s AND {col('claimed_by')} = %s"
    )


def record_remote(state: SinkState, sink: Sink, remote_id: str | None, worker: str) -> None:
    """Point the claimed session at a (new) remote thread, or at none. A thread made for a
    session deleted meanwhile, or claimed by another sender meanwhile, is nobody's: it is
    queued for deletion (after the transaction, which the ClaimLost undoes)."""
    lost = None
    with transaction.atomic():
        if not point_at(state=state, sink=sink, remote_id=remote_id):
            lost = ClaimLost(f"session {state.session_id} was deleted")
        elif sql.fetch_one(_owned_sql(), [state.pk, worker]) is None:
            lost = ClaimLost(f"session {state.session_id} was claimed by another sender")
            transaction.set_rollback(True)  # its thread stays the session's
    if lost is not None:
        if remote_id:
            queue_deletion(sink.name, remote_id, state.session.session_key)
        raise lost
    state.remote_id = remote_id
    state.delivered_seq = 0
    state.inflight_seq = None


def stored_role(role: str) -> str:
    """A remote message's role as the local store keeps it (an unknown one as assistant)."""
    return role if role in ChatMessage.Role.values else ChatMessage.Role.ASSISTANT


# Moves local sequence numbers out of the way for a moment; far above any real one.
_SEQ_SHIFT = 1_000_000_000


@transaction.atomic
def history_insert(
    *, session_pk: int, state: SinkState, remote_id: str, remote: Sequence[RemoteMessage]
) -> ChatSession | None:
    """Put the whole remote thread `remote_id` (its messages `remote`, oldest first) before the
    session's local messages: numbered from 1 with receipts, so it counts as delivered, and the
    local messages after it; the other sinks' marks move with them. Returns the session, or
    None when nothing was written: the history was imported already (by another turn or
    sender), or the session points at another thread now."""
    session = ChatSession.objects.select_for_update().filter(pk=session_pk).first()
    if session is None or session.history_import_from != state.sink:
        return None
    if not SinkState.objects.filter(pk=state.pk, remote_id=remote_id).exists():
        return None
    count = len(remote)
    _shift(ChatMessage.objects.filter(session=session), count)
    # What another sink holds stays its own (its marks and receipts move with the messages); a
    # sink that holds nothing yet is sent the imported history too.
    others = SinkState.objects.filter(session=session).exclude(pk=state.pk)
    others.filter(wanted_seq__gt=0).update(wanted_seq=F("wanted_seq") + count)
    others.filter(delivered_seq__gt=0).update(delivered_seq=F("delivered_seq") + count)
    others.filter(inflight_seq__isnull=False).update(inflight_seq=F("inflight_seq") + count)
    _shift(SinkReceipt.objects.filter(state__in=others), count)
    ChatMessage.objects.bulk_create(
        ChatMessage(
            session=session,
            seq=seq,
            role=stored_role(message.role),
            content=message.content,
            agent_id=session.agent_id,
        )
        for seq, message in enumerate(remote, start=1)
    )
    SinkReceipt.objects.bulk_create(
        SinkReceipt(state=state, seq=seq, remote_id=message.remote_id)
        for seq, message in enumerate(remote, start=1)
    )
    session.last_seq += count
    session.user_turns += sum(1 for m in remote if m.role == ChatMessage.Role.USER)
    session.history_import_from = ""
    session.save(update_fields=["last_seq", "user_turns", "history_import_from"])
    SinkState.objects.filter(pk=state.pk).update(
        delivered_seq=count, inflight_seq=None, wanted_seq=session.last_seq
    )
    return session


def _shift(rows, count: int) -> None:
    """Add `count` to the `seq` of `rows`, in two steps so that no intermediate number collides
    (unique constraints are checked per row)."""
    rows.update(seq=F("seq") + _SEQ_SHIFT)
    rows.update(seq=F("seq") - _SEQ_SHIFT + count)


@transaction.atomic
def history_forget(*, state: SinkState, sink: Sink) -> None:
    """The thread to import from is gone: point the session at no thread, nothing to import, so
    that the sender makes a new thread and fills it with the local history."""
    point_at(state=state, sink=sink, remote_id=None)
    ChatSession.objects.filter(pk=state.session_id).update(history_import_from="")


def reload_owned(state: SinkState, worker: str) -> None:
    """Read the claimed row's delivery fields again (another turn or sender may have imported
    the history meanwhile); ClaimLost if it is not ours any more."""
    fields = ("remote_id", "wanted_seq", "delivered_seq", "inflight_seq")
    values = _owned(state, worker).values(*fields).first()
    if values is None:
        raise ClaimLost(f"session {state.session_id} was claimed by another sender or deleted")
    for name, value in values.items():
        setattr(state, name, value)


def queue_deletion(sink_name: str, remote_id: str, session_key: str) -> None:
    RemoteDeletion.objects.get_or_create(
        sink=sink_name, remote_id=remote_id, defaults={"session_key": session_key}
    )


# Every delivered batch runs pending_messages, mark_inflight and record_delivered, so they are
# SQL, not the ORM (see sessions_app.sql), each statement built once as the turn's are: with the
# sender inside a server, building them was CPU taken from the turns.


def pending_messages(state: SinkState, limit: int) -> list[OutgoingMessage]:
    """The first `limit` messages after `delivered_seq`: up to the session's newest, which a
    pending state wants whatever its `wanted_seq` (see SinkState)."""
    rows = sql.fetch_all(_pending_messages_sql(), [state.session_id, state.delivered_seq, limit])
    return [OutgoingMessage(*row) for row in rows]


@functools.cache
def _pending_messages_sql() -> str:
    seq = sql.column(ChatMessage, "seq")
    return (
        f"SELECT {sql.columns(ChatMessage, ['seq', 'role', 'content', 'agent_id'])} "
        f"FROM {sql.table(ChatMessage)} WHERE {sql.column(ChatMessage, 'session_id')} = %s "
        f"AND {seq} > %s ORDER BY {seq} LIMIT %s"
    )


def next_batch(state: SinkState, limit: int, worker: str) -> list[OutgoingMessage]:
    """The next pending messages (at most `limit`), marked in flight; [] when none are left."""
    messages = pending_messages(state, limit)
    if messages:
        mark_inflight(state, messages[-1].seq, worker)
    return messages


def _update_owned(state: SinkState, worker: str, values: dict) -> None:
    """UPDATE the claimed row with `values` (attname -> Python value); ClaimLost if the row is
    not ours any more."""
    adapt = sql.db().ops.adapt_datetimefield_value
    params = [adapt(v) if isinstance(v, datetime) else v for v in values.values()]
    if not sql.execute(_update_owned_sql(tuple(values)), [*params, state.pk, worker]):
        raise ClaimLost(f"session {state.session_id} was claimed by another sender")


@functools.cache
def _update_owned_sql(names: tuple[str, ...]) -> str:
    col = functools.partial(sql.column, SinkState)
    return (
        f"UPDATE {sql.table(SinkState)} SET {', '.join(f'{col(name)} = %s' for name in names)} "
        f"WHERE {col('id')} = %s AND {col('claimed_by')} = %s"
    )


def mark_inflight(state: SinkState, seq: int, worker: str) -> None:
    """Note the batch about to be sent, and renew the lease; ClaimLost if it is not ours."""
    lease_end = timezone.now() + timedelta(seconds=settings.SYNC_LEASE_S)
    _update_owned(state, worker, {"inflight_seq": seq, "claimed_until": lease_end})
    state.inflight_seq = seq


@transaction.atomic
def record_delivered(
    state: SinkState,
    seqs: Sequence[int],
    remote_ids: Sequence[str],
    worker: str,
    *,
    batch_done: bool = True,
    release_when_done: bool = False,
) -> bool:
    """Receipts for delivered messages (a prefix of the pending ones) and the new high mark;
    the sink took the batch, so its breaker closes. When the batch was cut short (`batch_done`
    false) it stays marked in flight, so the next attempt checks the thread first: the failed
    message may have landed after all; the breaker is left to the failure.

    On reaching `wanted_seq`, it is raised to the session's newest message: the turns of a
    session whose state is pending leave it as it is (services.mark_pending). If that leaves
    nothing to send and `release_when_done`, the claim ends in the same write (release_state).
    Returns whether it did."""
    delivered_seq = seqs[-1] if seqs else state.delivered_seq
    wanted_seq = state.wanted_seq
    if delivered_seq >= wanted_seq:
        wanted_seq = max(wanted_seq, _newest_seq(state.session_id))
    inflight_seq = None if batch_done else state.inflight_seq
    now = timezone.now()
    release = release_when_done and delivered_seq >= wanted_seq
    _update_owned(
        state,
        worker,
        {
            # Written only when raised: a value read at the claim would undo what an import
            # or a resend (history_insert, session_sync_restart) set meanwhile.
            **({"wanted_seq": wanted_seq} if wanted_seq != state.wanted_seq else {}),
            "delivered_seq": delivered_seq,
            "inflight_seq": inflight_seq,
            "synced_at": now,
            **(_released(now) if release else {}),
        },
    )
    if seqs:
        sql.execute(
            _receipts_sql(len(seqs)),
            [
                value
                for seq, remote_id in zip(seqs, remote_ids, strict=True)
                for value in (state.pk, seq, remote_id)
            ],
        )
    # A batch cut short is a failure, which the caller records next: the breaker stays.
    _record_health(state.sink, now, delivered=len(seqs), success=batch_done)
    state.wanted_seq, state.delivered_seq = wanted_seq, delivered_seq
    state.inflight_seq, state.synced_at = inflight_seq, now
    return release


@functools.lru_cache(maxsize=64)
def _receipts_sql(count: int) -> str:
    columns = sql.columns(SinkReceipt, ["state_id", "seq", "remote_id"])
    return (
        f"INSERT INTO {sql.table(SinkReceipt)} ({columns}) "
        f"VALUES {', '.join(['(%s, %s, %s)'] * count)}"
    )


def _newest_seq(session_id: int) -> int:
    """The session's newest message (0 if the session is gone). Call inside a transaction: on
    PostgreSQL the session row is locked, so that a turn still writing a message to it (which
    holds that lock, and found the state pending) commits first and is seen here; on SQLite the
    sender's write transaction excludes the turns' anyway. The session row before the sink
    state, in the order a turn locks them: the two never deadlock."""
    row = sql.fetch_one(_newest_seq_sql(), [session_id])
    return row[0] if row else 0


@functools.cache
def _newest_seq_sql() -> str:
    return (
        f"SELECT {sql.column(ChatSession, 'last_seq')} FROM {sql.table(ChatSession)} "
        f"WHERE {sql.column(ChatSession, 'id')} = %s{_session_lock()}"
    )


def receipt_ids(state: SinkState) -> set[str]:
    return set(SinkReceipt.objects.filter(state=state).values_list("remote_id", flat=True))


def release_state(
    state: SinkState, *, worker: str = "", error: str = "", retry_in: float | None = None
) -> None:
    """End the claim (`worker` ''; a row nobody claimed): after success (error ''), due again at
    once if more is pending; after a failure, due again in `retry_in` seconds."""
    now = timezone.now()
    released = _released(now)
    if error:
        released.update(
            attempts=F("attempts") + 1,
            last_error=error[:2000],
            last_error_at=now,
            next_attempt_at=now + timedelta(seconds=retry_in or 0),
        )
    SinkState.objects.filter(pk=state.pk, claimed_by=worker).update(**released)


def _released(now) -> dict:
    return {
        "attempts": 0,
        "last_error": "",
        "next_attempt_at": now,
        "claimed_by": "",
        "claimed_until": None,
    }


def renew_leases(worker: str) -> None:
    lease_end = timezone.now() + timedelta(seconds=settings.SYNC_LEASE_S)
    SinkState.objects.filter(claimed_by=worker).update(claimed_until=lease_end)
    RemoteDeletion.objects.filter(claimed_by=worker).update(claimed_until=lease_end)


def release_deletion(deletion: RemoteDeletion, *, error: str, retry_in: float) -> None:
    RemoteDeletion.objects.filter(pk=deletion.pk).update(
        attempts=F("attempts") + 1,
        last_error=error[:2000],
        next_attempt_at=timezone.now() + timedelta(seconds=retry_in),
        claimed_by="",
        claimed_until=None,
    )


def record_sink_result(sink: Sink, error: str = "") -> None:
    """Feed the breaker: open it after SYNC_BREAKER_THRESHOLD failures in a row."""
    now = timezone.now()
    if not error:
        _record_health(sink.name, now, delivered=0, success=True)
        return
    with transaction.atomic():
        health, _ = SinkHealth.objects.select_for_update().get_or_create(sink=sink.name)
        health.consecutive_failures += 1
        health.failed_total += 1
        health.last_error = error[:2000]
        health.last_failure_at = now
        if health.consecutive_failures >= settings.SYNC_BREAKER_THRESHOLD:
            cooldown = settings.SYNC_BREAKER_COOLDOWN_S
            health.open_until = now + timedelta(seconds=cooldown)
            logger.warning(
                "%s thread operation failed, falling back to local storage: %s "
                "(%d failures in a row; no calls for %g s)",
                sink.label,
                error,
                health.consecutive_failures,
                cooldown,
            )
        health.save()


def _record_health(sink_name: str, now, *, delivered: int, success: bool) -> None:
    """Count `delivered` messages for the sink and, on `success`, close its breaker: one write
    of the row that every sender shares (SQL: a delivered batch runs it)."""
    sql.execute(
        _record_health_sql(success),
        [
            delivered,
            *([sql.db().ops.adapt_datetimefield_value(now)] if success else []),
            sink_name,
        ],
    )


@functools.cache
def _record_health_sql(success: bool) -> str:
    col = functools.partial(sql.column, SinkHealth)
    closed = (
        f", {col('consecutive_failures')} = 0, {col('open_until')} = NULL, "
        f"{col('last_success_at')} = %s"
    )
    return (
        f"UPDATE {sql.table(SinkHealth)} SET {col('delivered_total')} = "
        f"{col('delivered_total')} + %s{closed if success else ''} WHERE {col('sink')} = %s"
    )


def log_thread_lost(sink: Sink, remote_id: str | None, exc: Exception) -> None:
    """The design's log line for a remote thread that is gone (a new one follows)."""
    logger.warning(
        "Failed to load context from %s thread %s: %s; creating a new thread",
        sink.label,
        remote_id,
        exc,
    )


# ---- delivery --------------------------------------------------------------------------------


def error_text(exc: Exception) -> str:
    """An exception as a sink's last error reads."""
    if isinstance(exc, SinkError):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"


class Sender:
    """One sender: claims due work for every active sink and delivers it."""

    def __init__(self, *, name: str | None = None, pacer: "CpuPacer | None" = None):
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        # Inside a server: holds the sender back while the server is busy (see CpuPacer).
        self.pacer = pacer
        # Sink name -> monotonic time before which a pass over it could do nothing: its breaker
        # is known to be open, or it was off (checked again after SYNC_POLL_INTERVAL_S).
        self._parked_until: dict[str, float] = {}

    async def run_once(self) -> int:
        """One pass over every sink, the sinks side by side; returns how many sessions and
        deletions it handled."""
        return sum(await asyncio.gather(*(self.run_sink_once(sink) for sink in all_sinks())))

    async def run_sink_once(self, sink: Sink) -> int:
        """One pass over one sink: claim its due work and deliver it."""
        if self._parked_until.get(sink.name, 0) > time.monotonic():
            return 0
        limit, states, deletions = await db(self._claim)(sink)
        if limit is None:  # the sink is off: no pass (a thread's hop) per turn meanwhile
            self._parked_until[sink.name] = time.monotonic() + settings.SYNC_POLL_INTERVAL_S
            return 0
        if limit == 0:
            # Known open: no query at all until the cool-down is over.
            self._parked_until[sink.name] = time.monotonic() + settings.SYNC_BREAKER_COOLDOWN_S / 2
            return 0
        if not states and not deletions:
            return 0
        semaphore = asyncio.Semaphore(settings.SYNC_CONCURRENCY)
        # While this sender works, its leases are renewed; if it dies, they run out.
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            await asyncio.gather(
                *(self._bounded(semaphore, self.deliver(sink, state)) for state in states),
                *(self._bounded(semaphore, self.delete(sink, d)) for d in deletions),
            )
        finally:
            heartbeat.cancel()
        return len(states) + len(deletions)

    def _parked_for(self, sinks: Sequence[Sink]) -> float:
        """Seconds until the first of `sinks` may be passed over again; 0 if one may be now."""
        now = time.monotonic()
        return max(0.0, min((self._parked_until.get(s.name, 0) - now for s in sinks), default=0))

    async def _bounded(self, semaphore: asyncio.Semaphore, job) -> None:
        async with semaphore:
            if self.pacer is not None:
                # This task's own context: the sinks' calls within the job are paced too.
                remote_call_pacer.set(self.pacer.wait)
            await self._paced()
            await job

    async def _paced(self) -> None:
        if self.pacer is not None:
            await self.pacer.wait()

    def _claim(self, sink: Sink) -> tuple[int | None, list[SinkState], list[RemoteDeletion]]:
        """The breaker's allowance (None: the sink is off), then the due work claimed: cheap
        reads first, a write transaction only when there is something to take."""
        if not sink.active():
            return None, [], []
        limit = breaker_allows(sink.name)
        if limit == 0:
            return 0, [], []
        now = timezone.now()
        states = deletions = []
        if has_due_states(sink.name, now):
            states = claim_states(sink_name=sink.name, worker=self.name, limit=limit)
        if RemoteDeletion.objects.filter(sink=sink.name, next_attempt_at__lte=now).exists():
            deletions = claim_deletions(sink_name=sink.name, worker=self.name, limit=limit)
        return limit, states, deletions

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(settings.SYNC_LEASE_S / 3)
            await db(renew_leases)(self.name)

    async def run(self, stop: threading.Event, wake: threading.Event | None = None) -> None:
        """Until `stop` is set: one loop per sink, so a slow or failing sink never holds up
        another; a loop that found nothing waits for `wake` or SYNC_POLL_INTERVAL_S."""
        logger.info("Sync sender %s started", self.name)
        loop = asyncio.get_running_loop()
        sinks = all_sinks()
        due = {sink.name: asyncio.Event() for sink in sinks}
        waiting: set[str] = set()  # the sinks whose loop waits for its due event
        went_idle = asyncio.Event()  # a loop came to wait, or ended

        async def tick() -> None:
            while not stop.is_set():
                went_idle.clear()
                idle = [sink for sink in sinks if sink.name in waiting]
                parked = self._parked_for(idle)
                if sinks and (not idle or (parked > 0 and len(idle) < len(sinks))):
                    # A loop in a pass starts the next one itself when it ends, and the
                    # waiting ones (if any) could do nothing yet: no turn's wake is taken up
                    # meanwhile (each costs the server thread switches; one that comes stays
                    # set). Held back by its pacer, the sender is in a pass for seconds.
                    try:
                        await asyncio.wait_for(went_idle.wait(), parked or None)
                        continue
                    except TimeoutError:
                        pass  # a parked sink may be passed over again
                elif parked > 0:
                    # Every sink is off or its breaker open: a turn's wake could start
                    # nothing, so none is waited for.
                    await loop.run_in_executor(None, stop.wait, parked)
                else:
                    waiter = wake or stop
                    await loop.run_in_executor(None, waiter.wait, settings.SYNC_POLL_INTERVAL_S)
                    # Turns wake us after each commit; gather a short while of them into one
                    # pass instead of a pass per commit.
                    await asyncio.sleep(settings.SYNC_WAKE_COALESCE_S)
                if wake is not None:
                    wake.clear()
                for event in due.values():
                    event.set()
                waiting.clear()  # woken: each is about to pass, not to wait
            for event in due.values():  # the loops waiting to the end see the stop
                event.set()

        async def sink_loop(sink: Sink) -> None:
            try:
                while not stop.is_set():
                    # Cleared before the pass, not after it: a wake (or the stop) that comes
                    # during the pass is seen once it ends, instead of being waited for until
                    # the next.
                    due[sink.name].clear()
                    try:
                        handled = await self.run_sink_once(sink)
                    except Exception:
                        logger.exception("Sync pass for %s failed; retrying", sink.label)
                        handled = 0
                    if handled == 0 and not stop.is_set():
                        waiting.add(sink.name)
                        went_idle.set()
                        try:
                            await due[sink.name].wait()
                        finally:
                            waiting.discard(sink.name)
            finally:
                went_idle.set()  # the tick may be waiting for this loop: the stop is seen

        await asyncio.gather(tick(), *(sink_loop(sink) for sink in sinks))
        await self.aclose(sinks)
        logger.info("Sync sender %s stopped", self.name)

    async def aclose(self, sinks: Sequence[Sink] | None = None) -> None:
        """Close the sinks' clients of this event loop (those of `sinks`: the ones it used)."""
        for sink in all_sinks() if sinks is None else sinks:
            await sink.aclose()

    async def run_once_and_close(self) -> int:
        """`run_once` for a short-lived event loop (a command, a test)."""
        try:
            return await self.run_once()
        finally:
            await self.aclose()

    async def deliver(self, sink: Sink, state: SinkState) -> None:
        try:
            try:
                released = await self._deliver(sink, state)
            except RemoteNotFound as exc:
                await self._replace_lost_thread(sink, state, exc)
                released = await self._deliver(sink, state)
        except ClaimLost as exc:
            logger.warning("Sync of session %s stopped: %s", state.session_id, exc)
            return
        except Exception as exc:
            if not isinstance(exc, SinkError):
                logger.exception("Unexpected error delivering session %s", state.session_id)
            await self._failed(sink, state, exc)
            return
        if not released:
            await db(release_state)(state, worker=self.name)
            await db(record_sink_result)(sink)

    async def _replace_lost_thread(self, sink: Sink, state: SinkState, exc: Exception) -> None:
        """The thread is gone remotely: start a new one and send the whole history again. The
        old id is queued for deletion, in case it is only hidden (then it does not linger)."""
        log_thread_lost(sink, state.remote_id, exc)
        await db(queue_deletion)(sink.name, state.remote_id, state.session.session_key)
        await db(record_remote)(state, sink, None, self.name)

    async def _import_history(self, sink: Sink, state: SinkState) -> None:
        """The session was pointed at an existing thread whose history is not local yet (its
        turns read only the newest page): read the whole thread into the local store, before
        the session's own messages, which are then delivered as usual."""
        try:
            if not state.remote_id:
                raise RemoteNotFound("no thread to import from")
            remote = await sink.load(remote_id=state.remote_id)
        except RemoteNotFound as exc:
            # Not queued for deletion: the thread was never this session's own.
            if state.remote_id:
                log_thread_lost(sink, state.remote_id, exc)
            await db(history_forget)(state=state, sink=sink)
        else:
            await db(history_insert)(
                session_pk=state.session_id, state=state, remote_id=state.remote_id, remote=remote
            )
        await db(reload_owned)(state, self.name)
        state.session.history_import_from = ""

    async def _deliver(self, sink: Sink, state: SinkState) -> bool:
        """Send what is pending, batch by batch; True when the last batch's write also ended
        the claim and closed the breaker (what deliver does otherwise)."""
        if state.session.history_import_from == sink.name:
            await self._import_history(sink, state)
        if not state.remote_id:
            remote_id = await sink.create_remote(session=session_info(state.session))
            await db(record_remote)(state, sink, remote_id, self.name)
        if state.inflight_seq is not None:
            await self._reconcile(sink, state)
        while messages := await db(next_batch)(state, settings.SYNC_BATCH_SIZE, self.name):
            try:
                ids = await sink.append(remote_id=state.remote_id, messages=messages)
            except AppendInterrupted as exc:
                done = [m.seq for m in messages[: len(exc.delivered_ids)]]
                await db(record_delivered)(
                    state, done, exc.delivered_ids, self.name, batch_done=False
                )
                raise exc.cause from exc
            # The batch that reaches wanted_seq (raised meanwhile to the newest message, if
            # turns came) ends the claim, in the same write.
            if await db(record_delivered)(
                state, [m.seq for m in messages], ids, self.name, release_when_done=True
            ):
                return True
            await self._paced()
        return False

    async def _reconcile(self, sink: Sink, state: SinkState) -> None:
        """A sender died, or a call failed, while the batch up to `inflight_seq` was being sent:
        find which of its messages landed and record them, so none is sent twice. Messages are
        matched by the seq they carry when the sink keeps it; otherwise the thread's messages
        without a receipt are taken as the batch's first ones, in order."""
        known = await db(receipt_ids)(state)
        remote = [m for m in await sink.load(remote_id=state.remote_id) if m.remote_id not in known]
        batch = await db(pending_messages)(state, state.inflight_seq - state.delivered_seq)
        if any(m.seq is not None for m in remote):
            by_seq = {m.seq: m.remote_id for m in remote}
            landed_ids = []
            for message in batch:
                if message.seq not in by_seq:
                    break
                landed_ids.append(by_seq[message.seq])
        else:
            landed_ids = [m.remote_id for m in remote][: len(batch)]
        logger.info(
            "Reconciled %s thread %s after an interrupted batch: %d of %d messages had landed",
            sink.label,
            state.remote_id,
            len(landed_ids),
            len(batch),
        )
        landed = [m.seq for m in batch[: len(landed_ids)]]
        await db(record_delivered)(state, landed, landed_ids, self.name)

    async def _failed(self, sink: Sink, state: SinkState, exc: Exception) -> None:
        error = error_text(exc)
        retry_after = exc.retry_after if isinstance(exc, RemoteThrottled) else None
        delay = backoff_delay(state.attempts + 1, retry_after)
        if state.session.history_import_from == sink.name:
            logger.warning(
                "%s thread operation failed, falling back to local storage: %s "
                "(loading the history of thread %s; retry in %.1f s)",
                sink.label,
                error,
                state.remote_id,
                delay,
            )
        elif state.remote_id:
            logger.warning(
                "Failed to save context to %s thread %s: %s (retry in %.1f s)",
                sink.label,
                state.remote_id,
                error,
                delay,
            )
        else:
            logger.warning(
                "%s thread operation failed, falling back to local storage: %s "
                "(session %s; retry in %.1f s)",
                sink.label,
                error,
                state.session.session_key,
                delay,
            )
        await db(release_state)(state, worker=self.name, error=error, retry_in=delay)
        await db(record_sink_result)(sink, error)

    async def delete(self, sink: Sink, deletion: RemoteDeletion) -> None:
        try:
            await sink.delete_remote(remote_id=deletion.remote_id)
        except Exception as exc:
            error = error_text(exc)
            retry_after = exc.retry_after if isinstance(exc, RemoteThrottled) else None
            delay = backoff_delay(deletion.attempts + 1, retry_after)
            logger.warning(
                "%s thread operation failed, falling back to local storage: could not delete "
                "thread %s of deleted session %s: %s (retry in %.1f s)",
                sink.label,
                deletion.remote_id,
                deletion.session_key,
                error,
                delay,
            )
            await db(release_deletion)(deletion, error=error, retry_in=delay)
            await db(record_sink_result)(sink, error)
            return
        await db(RemoteDeletion.objects.filter(pk=deletion.pk).delete)()
        await db(record_sink_result)(sink)


# ---- the sender inside a server process ------------------------------------------------------


class ThreadClocks:
    """The CPU time of a set of threads: the in-process sender's event loop and database
    threads, each added from inside itself."""

    def __init__(self) -> None:
        self._clocks: dict[int, float] = {}  # clock id -> its last reading
        self._lock = threading.Lock()
        # The threads' kernel ids, for RunQueueWaits to leave out (only ever added to).
        self.native_ids: set[int] = set()

    def add_current_thread(self) -> None:
        clock = time.pthread_getcpuclockid(threading.get_ident())
        with self._lock:
            self._clocks[clock] = 0.0
            self.native_ids.add(threading.get_native_id())

    def seconds(self) -> float:
        with self._lock:
            for clock in self._clocks:
                try:
                    self._clocks[clock] = time.clock_gettime(clock)
                except OSError:
                    pass  # the thread has ended: its last reading stands
            return sum(self._clocks.values())


class RunQueueWaits:
    """The time the process's other threads (not `exclude`'s: the sender's) spent ready to run
    but waiting for a CPU, from Linux's /proc/self/task/*/schedstat. That wait is the load a
    process's own CPU time does not show: other processes on its CPU (more server processes
    than cores, a batch job) take the CPU its turns wait for.

    Each thread's file stays open and is read again in place: opened for each reading, a
    server's 41 threads took 0.7 ms, against 0.16 ms now. A pacer holding the sender back reads
    about 4 times a second, which had taken half of the share of a server that gets a quarter
    of a CPU. A reading stands for MAX_AGE_S; `seconds()` is None where the kernel does not
    keep these figures. `close()` closes the files."""

    MAX_AGE_S = 0.2
    TASKS = "/proc/self/task"

    def __init__(
        self, exclude: Callable[[], set[int]] = set, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._exclude = exclude
        self._clock = clock
        self._read_at: float | None = None
        self._total: float | None = None
        # Thread id -> [its open schedstat file, its last reading]; what ended threads waited
        # stays in `_ended`.
        self._threads: dict[int, list] = {}
        self._ended = 0.0
        self.available = os.path.exists(f"{self.TASKS}/{threading.get_native_id()}/schedstat")

    def seconds(self) -> float | None:
        if not self.available:
            return None
        now = self._clock()
        if self._read_at is None or now - self._read_at >= self.MAX_AGE_S:
            self._read_at = now
            self._total = self._read()
        return self._total

    def close(self) -> None:
        for tid in list(self._threads):
            self._end(tid)

    def _end(self, tid: int) -> None:
        """The thread ended (or is no longer counted): its last reading stands."""
        fd, waited = self._threads.pop(tid)
        self._ended += waited
        os.close(fd)

    def _read(self) -> float:
        exclude = self._exclude()
        try:
            tids = {int(t) for t in os.listdir(self.TASKS)} - exclude
        except OSError:
            tids = set()
        for gone in self._threads.keys() - tids:
            self._end(gone)
        for tid in tids:
            thread = self._threads.get(tid)
            if thread is None:
                try:
                    fd = os.open(f"{self.TASKS}/{tid}/schedstat", os.O_RDONLY)
                except OSError:
                    continue  # ended meanwhile
                thread = self._threads[tid] = [fd, 0.0]
            try:
                # "<ns on a CPU> <ns waiting on a run queue> <time slices>"
                thread[1] = int(os.pread(thread[0], 128, 0).split()[1]) / 1e9
            except (OSError, ValueError, IndexError):
                # Ended meanwhile (ESRCH), though its id is listed: a new thread may have
                # taken it, which the next reading opens afresh.
                self._end(tid)
        return self._ended + sum(waited for _, waited in self._threads.values())


class CpuPacer:
    """Paces the sender inside a server process so that the turns come first, as a database's
    cost-based vacuum delay does. The sender may use the CPU that the rest of the process leaves
    idle, less HEADROOM_CPU kept free for the turns to grow into, and never less than `share`
    of the CPU the process gets (of a CPU, for a server alone on its core): at low load it
    keeps up with the turns, and while the server is saturated it delivers at `share` and
    catches up once the load eases. A CPU here is the one that the interpreter's lock lets a
    Python process use, whatever the machine has.

    Measured over the last one to two WINDOW_S: the process's CPU time (`process_cpu`), the
    sender's own (`own_cpu`) and the time the other threads waited for a CPU (`waited`, None
    where unknown), which counts as load: a process that shares its CPU with other busy
    processes (more servers than cores) uses little CPU itself, yet its turns wait for one."""

    WINDOW_S = 1.0
    # A process that gets less than a whole CPU (the interpreter's lock changing hands, other
    # processes or virtual machines on its core) looks idle by that much.
    HEADROOM_CPU = 0.25
    MIN_DELAY_S = 0.01
    MAX_DELAY_S = 0.25

    def __init__(
        self,
        share: float,
        own_cpu: Callable[[], float],
        process_cpu: Callable[[], float] = time.process_time,
        clock: Callable[[], float] = time.monotonic,
        waited: Callable[[], float | None] = lambda: None,
    ):
        self.share = share
        self._own_cpu = own_cpu
        self._process_cpu = process_cpu
        self._clock = clock
        self._waited = waited
        self._turn = asyncio.Lock()
        first = self._sample()
        self._marks = (first, first)

    def _sample(self) -> tuple[float, float, float, float]:
        return self._clock(), self._process_cpu(), self._own_cpu(), self._waited() or 0.0

    def delay(self) -> float:
        """Seconds the sender should wait before its next call; 0 to go on now."""
        now = self._sample()
        if now[0] - self._marks[1][0] >= self.WINDOW_S:
            self._marks = (self._marks[1], now)
        start = self._marks[0]
        wall = now[0] - start[0]
        own = now[2] - start[2]
        others = now[1] - start[1] - own
        if wall <= 0:
            return 0.0
        # The floor is `share` of the CPU the process got (at most one): servers that share a
        # core share the floor too, so the senders on a core take `share` of it between them
        # however many servers it runs (seen: five on one core, 2% of a CPU each, cost each
        # server 10% of what it got).
        floor = self.share * min(1.0, (now[1] - start[1]) / wall)
        # What the sender used past its floor counts as taken from the rest of the process:
        # under the interpreter's lock it largely was, and otherwise the rest would look the
        # idler the more the sender ran (seen: a process that got 0.75 of a CPU gave it 28%).
        waited = now[3] - start[3]
        load = (others + max(0.0, own - floor * wall) + waited) / wall
        allowed = max(floor, 1 - self.HEADROOM_CPU - load)  # CPUs
        if allowed <= 0:  # the process got no CPU at all in the window
            return self.MAX_DELAY_S if own > 0 else 0.0
        # Within what it is allowed once `own` is spread over own / allowed seconds.
        return min(self.MAX_DELAY_S, max(0.0, own / allowed - wall))

    async def wait(self) -> None:
        # One waiter at a time reads the clocks; the others queue behind it. Many of them each
        # polling in short sleeps would spend the sender's share on the polling.
        async with self._turn:
            while (delay := self.delay()) > 0:
                await asyncio.sleep(max(delay, self.MIN_DELAY_S))


_wake = threading.Event()
_started = threading.Lock()
_in_process: threading.Thread | None = None


def notify_sender() -> None:
    """Wake the in-process sender: a turn has work for it (call after commit)."""
    if not _wake.is_set():  # a busy server's turns find it set: no lock to take
        _wake.set()


def start_in_process_sender() -> None:
    """Start this process's sender thread once (when SYNC_IN_PROCESS); idempotent."""
    global _in_process
    if not settings.SYNC_IN_PROCESS:
        return
    with _started:
        if _in_process is not None:
            return
        stop = threading.Event()
        _in_process = threading.Thread(
            target=_run_in_process, args=(stop,), name="sync-sender", daemon=True
        )
        _in_process.start()

        def stop_sender() -> None:
            # Before the interpreter shuts thread pools down: let the current deliveries end
            # and their results (or the release of their claims) be written.
            stop.set()
            _wake.set()
            _in_process.join(timeout=settings.SYNC_SHUTDOWN_GRACE_S)

        # Runs at interpreter exit before concurrent.futures refuses new work (atexit would run
        # after it); the public atexit is the fallback where this hook does not exist.
        register = getattr(threading, "_register_atexit", atexit.register)
        register(stop_sender)


def _run_in_process(stop: threading.Event) -> None:
    """The in-process sender's thread: an event loop of its own, whose database calls run in
    threads of its own, so that the pacer can tell the sender's CPU from the server's."""
    share = settings.SYNC_IN_PROCESS_CPU_SHARE
    clocks = ThreadClocks()
    pacer = None
    if share < 1 and hasattr(time, "pthread_getcpuclockid"):
        clocks.add_current_thread()
        waits = RunQueueWaits(exclude=lambda: clocks.native_ids)
        pacer = CpuPacer(share, clocks.seconds, waited=waits.seconds)

    async def main() -> None:
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(
                thread_name_prefix="sync-sender-db",
                initializer=clocks.add_current_thread if pacer else None,
            )
        )
        await Sender(pacer=pacer).run(stop, _wake)

    try:
        asyncio.run(main())
    finally:
        if pacer is not None:
            waits.close()
