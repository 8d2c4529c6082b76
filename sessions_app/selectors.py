"""Reads: a user's sessions and a session's history. Every lookup is scoped to the user."""

import functools

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet

from sessions_app import sql
from sessions_app.agents import HistoryMessage
from sessions_app.models import ChatMessage, ChatSession


def session_list(*, user: AbstractBaseUser) -> QuerySet[ChatSession]:
    """The user's sessions, most recently active first."""
    return ChatSession.objects.filter(owner=user).order_by("-last_activity_at", "-id")


def session_get(
    *, user: AbstractBaseUser, session_id: str, agent_id: str, project_id: str
) -> ChatSession:
    """The user's session with this key; raises ChatSession.DoesNotExist otherwise, also when the
    session belongs to someone else."""
    return ChatSession.objects.get(
        owner=user, session_id=session_id, agent_id=agent_id, project_id=project_id
    )


def session_messages(*, session: ChatSession) -> QuerySet[ChatMessage]:
    """The session's messages in conversation order."""
    return ChatMessage.objects.filter(session=session).order_by("seq")


def session_history_window(
    *, session: ChatSession, before: ChatMessage, limit: int, stored_before: bool = False
) -> list[HistoryMessage]:
    """The last `limit` messages before the message `before` in the conversation, oldest first:
    the context for an agent. With `stored_before`, only messages stored before it: not a
    remote history imported since, which comes first in the conversation but later by id."""
    # Every turn reads it: SQL, not the ORM (see sessions_app.sql).
    rows = sql.fetch_all(_history_sql(stored_before), [session.pk, before.pk, limit])
    return [HistoryMessage(role=role, content=content) for role, content in reversed(rows)]


@functools.cache
def _history_sql(stored_before: bool) -> str:
    # The message's seq is read in the same statement: an import renumbers every message of
    # the session.
    seq, pk = sql.column(ChatMessage, "seq"), sql.column(ChatMessage, "id")
    bound = (
        f"{pk} < %s"
        if stored_before
        else f"{seq} < (SELECT {seq} FROM {sql.table(ChatMessage)} WHERE {pk} = %s)"
    )
    return (
        f"SELECT {sql.columns(ChatMessage, ['role', 'content'])} FROM {sql.table(ChatMessage)} "
        f"WHERE {sql.column(ChatMessage, 'session_id')} = %s AND {bound} "
        f"ORDER BY {seq} DESC LIMIT %s"
    )
