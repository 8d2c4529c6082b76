"""Loading a session's history from its remote thread, for a session that was pointed at an
existing thread (an import, or a fresh database) and so lacks that history locally."""

import logging

from asgiref.sync import async_to_sync
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from sessions_app.models import ChatMessage, ChatSession, SinkReceipt, SinkState
from sessions_app.sinks import RemoteMessage, RemoteNotFound, Sink, SinkError
from sessions_app.sync import (
    backoff_delay,
    breaker_allows,
    point_at,
    record_sink_result,
    release_state,
)

logger = logging.getLogger(__name__)

# Temporarily moves local sequence numbers out of the way; far above any real sequence number.
_SEQ_SHIFT = 1_000_000_000
ROLES = {choice.value for choice in ChatMessage.Role}


async def _load(sink: Sink, remote_id: str) -> list[RemoteMessage]:
    try:
        return await sink.load(remote_id=remote_id)
    finally:
        await sink.aclose()


def import_pending(
    *, session: ChatSession, user_message: ChatMessage, sinks: list[Sink]
) -> tuple[ChatSession, ChatMessage]:
    """Put the remote history before the session's local messages.

    This is the one remote call a chat turn may make, so it is bounded: it is skipped while the
    sink's breaker is open or the session's last attempt is backing off, and any failure lets
    the turn go on with the local history (the next turn tries again). A lost thread is
    replaced by a new one, which the sender creates and fills with the local history.
    """
    sink = next((s for s in sinks if s.name == session.history_import_from), None)
    if sink is None:
        return session, user_message
    state = SinkState.objects.get(session=session, sink=sink.name)
    if not state.remote_id:
        ChatSession.objects.filter(pk=session.pk).update(history_import_from="")
        session.history_import_from = ""
        return session, user_message
    if state.next_attempt_at > timezone.now() or breaker_allows(sink.name) == 0:
        return session, user_message
    try:
        remote = async_to_sync(_load)(sink, state.remote_id)
    except RemoteNotFound as exc:
        logger.warning(
            "Failed to load context from %s thread %s: %s; creating a new thread",
            sink.label,
            state.remote_id,
            exc,
        )
        with transaction.atomic():
            point_at(state=state, sink=sink, remote_id=None)
            ChatSession.objects.filter(pk=session.pk).update(history_import_from="")
        session.refresh_from_db()
        return session, user_message
    except Exception as exc:
        error = str(exc) if isinstance(exc, SinkError) else f"{type(exc).__name__}: {exc}"
        logger.warning(
            "%s thread operation failed, falling back to local storage: %s", sink.label, error
        )
        release_state(state, error=error, retry_in=backoff_delay(state.attempts + 1))
        record_sink_result(sink, error)
        return session, user_message
    imported = _insert_before_local(session=session, state=state, remote=remote)
    if imported is None:  # another turn imported it meanwhile
        session.refresh_from_db()
        user_message.refresh_from_db()
        return session, user_message
    user_message.seq += len(remote)
    return imported, user_message


@transaction.atomic
def _insert_before_local(
    *, session: ChatSession, state: SinkState, remote: list[RemoteMessage]
) -> ChatSession | None:
    session = ChatSession.objects.select_for_update().get(pk=session.pk)
    if not session.history_import_from:
        return None
    count = len(remote)
    local = ChatMessage.objects.filter(session=session)
    # Two steps, so that no intermediate sequence number collides (the constraint is per row).
    local.update(seq=F("seq") + _SEQ_SHIFT)
    local.update(seq=F("seq") - _SEQ_SHIFT + count)
    ChatMessage.objects.bulk_create(
        ChatMessage(
            session=session,
            seq=seq,
            role=message.role if message.role in ROLES else ChatMessage.Role.ASSISTANT,
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
