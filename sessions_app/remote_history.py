"""Reading a session's history from its remote thread, for a session that was pointed at an
existing thread (an import, or a fresh database) and so lacks that history locally.

A chat turn on such a session reads only the newest page of the thread (one round trip): a short
thread is then imported whole, at once; for a longer one the page is the agent's context for this
turn, and the background sender imports the whole thread (`Sender._import_history`).
"""

import logging
from dataclasses import dataclass

from asgiref.sync import async_to_sync
from django.conf import settings
from django.utils import timezone

from sessions_app.agents import HistoryMessage
from sessions_app.models import ChatSession, SinkState
from sessions_app.sinks import RecentMessages, RemoteNotFound, Sink
from sessions_app.sync import (
    backoff_delay,
    breaker_allows,
    error_text,
    history_forget,
    history_insert,
    log_thread_lost,
    record_sink_result,
    release_state,
    stored_role,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImportResult:
    session: ChatSession
    # While the older history is not local yet: the thread's newest messages, oldest first.
    recent: list[HistoryMessage]


async def _load_recent(sink: Sink, remote_id: str, at_least: int) -> RecentMessages:
    try:
        return await sink.load_recent(remote_id=remote_id, at_least=at_least)
    finally:
        await sink.aclose()


def import_pending(*, session: ChatSession, sinks: list[Sink]) -> ImportResult:
    """Put the remote history before the session's local messages, or, for a thread longer than
    one page, give this turn the newest messages and leave the rest to the sender.

    This is the one remote call a chat turn may make, so it is bounded: it is skipped while the
    sink's breaker is open or the session's last attempt is backing off, and any failure lets
    the turn go on with the local history (the next turn tries again). A lost thread is
    replaced by a new one, which the sender creates and fills with the local history.
    """
    unchanged = ImportResult(session, [])
    sink = next((s for s in sinks if s.name == session.history_import_from), None)
    if sink is None:
        return unchanged
    state = SinkState.objects.get(session=session, sink=sink.name)
    if not state.remote_id:
        ChatSession.objects.filter(pk=session.pk).update(history_import_from="")
        session.history_import_from = ""
        return unchanged
    if state.next_attempt_at > timezone.now() or breaker_allows(sink.name) == 0:
        return unchanged
    try:
        recent = async_to_sync(_load_recent)(sink, state.remote_id, settings.CHAT_HISTORY_WINDOW)
    except RemoteNotFound as exc:
        log_thread_lost(sink, state.remote_id, exc)
        history_forget(state=state, sink=sink)
        session.refresh_from_db()
        return unchanged
    except Exception as exc:
        error = error_text(exc)
        logger.warning(
            "%s thread operation failed, falling back to local storage: %s", sink.label, error
        )
        release_state(state, error=error, retry_in=backoff_delay(state.attempts + 1))
        record_sink_result(sink, error)
        return unchanged
    if not recent.complete:
        # The sender imports the whole thread (the in-process one is woken by the reply).
        return ImportResult(
            session, [HistoryMessage(stored_role(m.role), m.content) for m in recent.messages]
        )
    imported = history_insert(
        session_pk=session.pk, state=state, remote_id=state.remote_id, remote=recent.messages
    )
    if imported is None:  # another turn or the sender imported it meanwhile
        session.refresh_from_db()
        return unchanged
    imported.owner = session.owner
    return ImportResult(imported, [])
