"""Writes: the chat turn and session deletion. The REST view and the WebSocket consumer both call
`chat_turn`; they only translate its input and output."""

import functools
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from sessions_app import remote_history, selectors, sql
from sessions_app.agents import HistoryMessage, agent_get
from sessions_app.models import ChatMessage, ChatSession, RemoteDeletion, SinkState
from sessions_app.sinks import Sink, active_sinks, sink_get
from sessions_app.sync import notify_sender, point_at

logger = logging.getLogger(__name__)


class AgentFailed(RuntimeError):
    """The agent raised while replying; the user's message is stored, the reply is not."""


class SessionGone(LookupError):
    """The session was deleted while its turn was running."""


@dataclass(frozen=True)
class ChatTurn:
    session: ChatSession
    reply: str
    # "foundry" when the turn is queued for a Foundry thread, else "local".
    persistence: str


def new_session_id() -> str:
    return uuid.uuid4().hex


def chat_turn(
    *,
    user: AbstractBaseUser,
    message: str,
    session_id: str | None = None,
    agent_id: str | None = None,
    project_id: str | None = None,
    on_chunk: Callable[[str], None] | None = None,
) -> ChatTurn:
    """Run one turn: store the user's message, run the agent, store and return its reply.

    The session (user, agent, project, session_id) is created on its first message; a missing
    session_id gets a fresh one. `on_chunk` sees each chunk of the reply as the agent produces
    it. Raises UnknownAgent for an unregistered agent id, AgentFailed if the agent raises or
    replies with nothing.
    """
    agent_id = agent_id or settings.CHAT_DEFAULT_AGENT
    agent = agent_get(agent_id=agent_id)
    sinks = active_sinks()
    key = {
        "owner": user,
        "agent_id": agent_id,
        "project_id": project_id or settings.CHAT_DEFAULT_PROJECT,
        "session_id": session_id or new_session_id(),
    }
    session, user_message = _message_append(
        key=key, sinks=sinks, role=ChatMessage.Role.USER, content=message
    )
    recent_remote: list[HistoryMessage] = []
    if session.history_import_from:
        imported = remote_history.import_pending(session=session, sinks=sinks)
        session, recent_remote = imported.session, imported.recent
    # With the newest page of a remote thread in hand, the rest of the context is the session's
    # own messages: the sender may be putting the whole thread into the store meanwhile.
    history = selectors.session_history_window(
        session=session,
        before=user_message,
        limit=settings.CHAT_HISTORY_WINDOW,
        stored_before=bool(recent_remote),
    )
    if recent_remote:
        history = [*recent_remote, *history][-settings.CHAT_HISTORY_WINDOW :]
    # Unknown while the older history is still on the remote thread only.
    turn = None if session.history_import_from else session.user_turns
    chunks: list[str] = []
    try:
        for chunk in agent.stream_reply(turn=turn, history=history, message=message):
            chunks.append(chunk)
            if on_chunk is not None:
                on_chunk(chunk)
    except Exception as exc:
        logger.exception("Agent %s failed on session %s", agent_id, session.session_key)
        raise AgentFailed(agent_id) from exc
    reply = "".join(chunks)
    if not reply:
        # Nothing to show, and the remote stores refuse empty messages: treat it as a failure.
        logger.warning("Agent %s gave an empty reply on session %s", agent_id, session.session_key)
        raise AgentFailed(agent_id)
    session, _ = _message_append(
        key=key,
        sinks=sinks,
        role=ChatMessage.Role.ASSISTANT,
        content=reply,
        session_pk=session.pk,
    )
    persistence = "foundry" if any(sink.name == "foundry" for sink in sinks) else "local"
    return ChatTurn(session=session, reply=reply, persistence=persistence)


@transaction.atomic
def _message_append(
    *,
    key: dict,
    sinks: Sequence[Sink],
    role: str,
    content: str,
    session_pk: int | None = None,
) -> tuple[ChatSession, ChatMessage]:
    """Append one message to the session in one short transaction and return both; the
    message becomes pending for every active sink.

    The session is the one with `key`, created on its first message, or, given `session_pk`,
    that row only (SessionGone if it was deleted meanwhile).
    """
    is_user = role == ChatMessage.Role.USER
    match = {"id": session_pk} if session_pk is not None else _key_columns(key)
    names = tuple(sink.name for sink in sinks)
    # The message's time is the session's new activity time.
    now = timezone.now()
    stamp = sql.db().ops.adapt_datetimefield_value(now)
    session = _session_advance(match=match, user_turn=is_user, now=now, stamp=stamp)
    if session is None:
        if session_pk is not None:
            raise SessionGone(key["session_id"])
        ChatSession.objects.get_or_create(**key)
        session = _session_advance(match=match, user_turn=is_user, now=now, stamp=stamp)
        if session is None:  # deleted again between its creation and now
            raise SessionGone(key["session_id"])
    session.owner = key["owner"]
    message, all_pending = _message_insert(
        session=session, role=role, content=content, now=now, stamp=stamp, sinks=names
    )
    if sinks:
        # A turn that reads the session's remote history first wakes the sender only with its
        # reply: woken now, the sender would read the same thread at the same time.
        wake = not (is_user and session.history_import_from)
        mark_pending(
            session=session,
            sink_names=names,
            through_seq=message.seq,
            stamp=stamp,
            wake_sender=wake,
            known_pending=all_pending,
        )
    return session, message


def _key_columns(key: dict) -> dict:
    return {
        "owner_id": key["owner"].pk,
        "agent_id": key["agent_id"],
        "project_id": key["project_id"],
        "session_id": key["session_id"],
    }


# What a turn reads back from the session row it advances; the other fields load on access.
_ADVANCE_RETURNS = (
    "id",
    "owner_id",
    "session_id",
    "agent_id",
    "project_id",
    "last_seq",
    "user_turns",
    "foundry_thread_id",
    "history_import_from",
)


def _session_advance(
    *, match: dict, user_turn: bool, now: datetime, stamp: object
) -> ChatSession | None:
    """Give the matching session its next sequence number and return it (None: no such row);
    `now` is its activity time, `stamp` the same as the database driver takes it.

    One UPDATE ... RETURNING instead of a locking read and a write: the update holds the row
    lock until the transaction ends (SQLite: the IMMEDIATE transaction's write lock), so
    concurrent turns on one session get gapless, unique sequence numbers.
    """
    row = sql.fetch_one(_advance_sql(tuple(match)), [int(user_turn), stamp, stamp, *match.values()])
    if row is None:
        return None
    values = dict(zip(_ADVANCE_RETURNS, row, strict=True))
    return sql.instance(ChatSession, {**values, "last_activity_at": now, "updated_at": now})


# The turn's statements are built once: building one took up to 30k instructions, a tenth of
# running it.
@functools.cache
def _advance_sql(match: tuple[str, ...]) -> str:
    col = functools.partial(sql.column, ChatSession)
    where = " AND ".join(f"{col(name)} = %s" for name in match)
    return (
        f"UPDATE {sql.table(ChatSession)} SET {col('last_seq')} = {col('last_seq')} + 1, "
        f"{col('user_turns')} = {col('user_turns')} + %s, {col('last_activity_at')} = %s, "
        f"{col('updated_at')} = %s WHERE {where} "
        f"RETURNING {sql.columns(ChatSession, _ADVANCE_RETURNS)}"
    )


_INSERT_COLUMNS = ("session_id", "seq", "role", "content", "agent_id", "created_at")


@functools.cache
def _insert_sql(sinks: int) -> str:
    """The message's INSERT, returning its id and, given `sinks` sinks (their names the last
    parameters, after the session's id), how many of the session's states on them are pending.

    The count is safe to act on: no sender can finish a state meanwhile. A state stops being
    pending only in a transaction that holds the session row's lock (record_delivered,
    history_insert; on SQLite every write transaction excludes the others), which the turn's
    UPDATE of the session row took before this statement began. So a sender that finished the
    state before that UPDATE is seen (on PostgreSQL this statement's snapshot is newer than the
    UPDATE's, which may predate the sender's commit: under READ COMMITTED, which the settings
    pin, each statement has a snapshot of its own), and one that finishes it after
    this turn commits reads the turn's message as the session's newest (sync._newest_seq)."""
    col = functools.partial(sql.column, ChatMessage)
    pending = ""
    if sinks:
        state = functools.partial(sql.column, SinkState)
        pending = (
            f", (SELECT COUNT(*) FROM {sql.table(SinkState)} s "
            f"WHERE s.{state('session_id')} = %s "
            f"AND s.{state('sink')} IN ({', '.join(['%s'] * sinks)}) "
            f"AND s.{state('wanted_seq')} > s.{state('delivered_seq')})"
        )
    return (
        f"INSERT INTO {sql.table(ChatMessage)} ({sql.columns(ChatMessage, _INSERT_COLUMNS)}) "
        f"VALUES ({', '.join(['%s'] * len(_INSERT_COLUMNS))}) "
        f"RETURNING {col('id')}{pending}"
    )


@functools.cache
def _mark_pending_sql(sinks: int) -> str:
    col = functools.partial(sql.column, SinkState)
    table = sql.table(SinkState)
    # A new row's other columns: the model's defaults (tests/foundry_integration/
    # test_pending_marks.py checks). On PostgreSQL every call draws an id from the table's
    # (bigint) sequence, also when it inserts nothing.
    inserted = ["session_id", "sink", "wanted_seq", "next_attempt_at"]
    defaults = {"delivered_seq": "0", "attempts": "0", "last_error": "''", "claimed_by": "''"}
    row = f"(%s, %s, %s, %s, {', '.join(defaults.values())})"
    return (
        f"INSERT INTO {table} ({sql.columns(SinkState, [*inserted, *defaults])}) "
        f"VALUES {', '.join([row] * sinks)} "
        f"ON CONFLICT ({col('session_id')}, {col('sink')}) "
        f"DO UPDATE SET {col('wanted_seq')} = excluded.{col('wanted_seq')} "
        f"WHERE {table}.{col('wanted_seq')} <= {table}.{col('delivered_seq')}"
    )


def _message_insert(
    *,
    session: ChatSession,
    role: str,
    content: str,
    now: datetime,
    stamp: object,
    sinks: tuple[str, ...] = (),
) -> tuple[ChatMessage, bool]:
    """Insert the session's message number `session.last_seq`, created at `now` (`stamp`);
    with it, whether the session's states on all of `sinks` are pending already (see
    _insert_sql)."""
    values = {
        "session_id": session.pk,
        "seq": session.last_seq,
        "role": role,
        "content": content,
        "agent_id": session.agent_id,
    }
    # In _INSERT_COLUMNS' order.
    params = [*values.values(), stamp, *((session.pk, *sinks) if sinks else ())]
    row = sql.fetch_one(_insert_sql(len(sinks)), params)
    message = sql.instance(ChatMessage, {"id": row[0], **values, "created_at": now})
    message.session = session
    return message, bool(sinks) and row[1] == len(sinks)


def mark_pending(
    *,
    session: ChatSession,
    sink_names: Sequence[str],
    through_seq: int,
    stamp: object,
    wake_sender: bool = True,
    known_pending: bool = False,
) -> None:
    """Record that the sinks named want the session's messages up to `through_seq` (its
    newest), and wake the sender once the transaction commits (unless not `wake_sender`: it
    finds them on its next poll). `stamp` is now, as the database driver takes it;
    `known_pending`: the turn found every state pending already (_insert_sql), so there is
    nothing to write.

    One statement for every sink, which writes only where it changes something: a sink state
    new to the session is created, and one that had delivered everything becomes pending.
    A state still pending is left as it is (its `wanted_seq` may stay below the newest
    message): the sender, on reaching it, raises it to the session's newest message (see
    sessions_app.sync.record_delivered). So a busy session's turns run no statement on the
    sink states: on SQLite that write was most of the flag's cost per turn (a page for the
    database's log), and on PostgreSQL the upsert, which locks the row and draws an id from the
    sequence, was 7-8% of a turn's CPU (bench/run.py --postgres).
    """
    if not sink_names:
        return
    if not known_pending:
        sql.execute(
            _mark_pending_sql(len(sink_names)),
            [value for name in sink_names for value in (session.pk, name, through_seq, stamp)],
        )
    if wake_sender:
        transaction.on_commit(notify_sender)


@transaction.atomic
def session_attach_remote(
    *, user: AbstractBaseUser, key: dict, sink_name: str, remote_id: str
) -> ChatSession:
    """Point a session (created if need be) at an existing remote thread; from the session's
    next turn on, the thread's history is put into the local store before the session's own
    messages (see sessions_app.remote_history)."""
    session, _ = ChatSession.objects.select_for_update().get_or_create(owner=user, **key)
    sink = sink_get(sink_name)
    state, _ = SinkState.objects.get_or_create(session=session, sink=sink_name)
    point_at(state=state, sink=sink, remote_id=remote_id)
    session.history_import_from = sink_name
    session.save(update_fields=["history_import_from"])
    if sink.session_field:
        setattr(session, sink.session_field, remote_id)
    logger.info("Session %s now points at %s thread %s", session.session_key, sink.label, remote_id)
    return session


def _session_locked(session: ChatSession):
    """The session's row, locked when read (in a transaction): a chat turn and the sender lock
    it before its sink states, and so does every other writer of both, so none deadlocks."""
    return ChatSession.objects.select_for_update().filter(pk=session.pk)


@transaction.atomic
def session_delete(*, session: ChatSession) -> None:
    """Delete the session and its messages; its remote threads are queued for deletion (the
    sender retries until they are gone)."""
    # Locked first, so a sender creating a thread for it right now sees it gone (and queues
    # that thread's deletion) instead of the thread escaping us.
    _session_locked(session).first()
    remote = SinkState.objects.filter(session=session, remote_id__isnull=False)
    RemoteDeletion.objects.bulk_create(
        [
            RemoteDeletion(sink=sink, remote_id=remote_id, session_key=session.session_key)
            for sink, remote_id in remote.values_list("sink", "remote_id")
        ],
        ignore_conflicts=True,
    )
    session.delete()
    transaction.on_commit(notify_sender)
    logger.info("Deleted session %s", session.session_key)


def user_sessions_delete(*, user: AbstractBaseUser) -> int:
    """Delete every session of the user as session_delete does, their remote threads queued
    for deletion; returns how many. Runs before a user is deleted (sessions_app.apps): the
    database's cascade alone would leave the threads behind, and would lock the sink states
    before their sessions, against the order of turns and senders."""
    sessions = list(ChatSession.objects.filter(owner=user))
    for session in sessions:
        session_delete(session=session)
    return len(sessions)


def session_sync_retry(*, session: ChatSession) -> int:
    """Make the session's pending deliveries due now, forgetting their backoff."""
    updated = SinkState.objects.filter(session=session).update(
        next_attempt_at=timezone.now(), attempts=0
    )
    transaction.on_commit(notify_sender)
    return updated


@transaction.atomic
def session_sync_restart(*, session: ChatSession, sink: Sink) -> None:
    """Give the session a new remote thread on the sink and send its whole history there (the
    old thread is left as it is)."""
    # The session row first, as turns and senders lock it (no deadlock), and its newest message
    # as it is now, not as `session` was read.
    last_seq = _session_locked(session).values_list("last_seq", flat=True).first()
    if last_seq is None:
        return  # deleted meanwhile
    state, _ = SinkState.objects.get_or_create(session=session, sink=sink.name)
    point_at(state=state, sink=sink, remote_id=None)
    # A sender delivering to the session now loses its claim: its next write finds the row
    # not its own (ClaimLost) instead of recording what it sent to the old thread over this.
    SinkState.objects.filter(pk=state.pk).update(
        wanted_seq=last_seq,
        next_attempt_at=timezone.now(),
        attempts=0,
        last_error="",
        claimed_by="",
        claimed_until=None,
    )
    ChatSession.objects.filter(pk=session.pk).update(history_import_from="")
    transaction.on_commit(notify_sender)
    logger.info("Session %s will be resent to a new %s thread", session.session_key, sink.label)


@transaction.atomic
def session_remote_delete(*, session: ChatSession, sink: Sink) -> str | None:
    """Delete the session's remote thread on the sink (queued, retried until done); the session
    stays, local only, until its next turn starts a new thread. Returns the thread id."""
    _session_locked(session).first()  # first, as turns and senders lock it: no deadlock
    state = SinkState.objects.filter(session=session, sink=sink.name).first()
    if state is None or not state.remote_id:
        return None
    RemoteDeletion.objects.get_or_create(
        sink=sink.name,
        remote_id=state.remote_id,
        defaults={"session_key": session.session_key},
    )
    state.delete()
    # Nothing left to import from: the next turn starts a new thread from the local history.
    cleared = {"history_import_from": ""}
    if sink.session_field:
        cleared[sink.session_field] = None
    ChatSession.objects.filter(pk=session.pk).update(**cleared)
    transaction.on_commit(notify_sender)
    logger.info(
        "Session %s: %s thread %s queued for deletion",
        session.session_key,
        sink.label,
        state.remote_id,
    )
    return state.remote_id
