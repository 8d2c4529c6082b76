"""Writes: the chat turn and session deletion. The REST view and the WebSocket consumer both call
`chat_turn`; they only translate its input and output."""

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from sessions_app import selectors
from sessions_app.agents import agent_get
from sessions_app.models import ChatMessage, ChatSession

logger = logging.getLogger(__name__)


class AgentFailed(RuntimeError):
    """The agent raised while replying; the user's message is stored, the reply is not."""


class SessionGone(LookupError):
    """The session was deleted while its turn was running."""


@dataclass(frozen=True)
class ChatTurn:
    session: ChatSession
    reply: str

    @property
    def persistence(self) -> str:
        return "foundry" if self.session.foundry_thread_id else "local"


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
    it. Raises UnknownAgent for an unregistered agent id, AgentFailed if the agent raises.
    """
    agent_id = agent_id or settings.CHAT_DEFAULT_AGENT
    agent = agent_get(agent_id=agent_id)
    session, user_message = _message_append(
        user=user,
        session_id=session_id or new_session_id(),
        agent_id=agent_id,
        project_id=project_id or settings.CHAT_DEFAULT_PROJECT,
        role=ChatMessage.Role.USER,
        content=message,
    )
    history = selectors.session_history_window(
        session=session, before_seq=user_message.seq, limit=settings.CHAT_HISTORY_WINDOW
    )
    chunks: list[str] = []
    try:
        for chunk in agent.stream_reply(turn=session.user_turns, history=history, message=message):
            chunks.append(chunk)
            if on_chunk is not None:
                on_chunk(chunk)
    except Exception as exc:
        logger.exception("Agent %s failed on session %s", agent_id, session.session_key)
        raise AgentFailed(agent_id) from exc
    reply = "".join(chunks)
    session, _ = _message_append(
        user=user,
        session_id=session.session_id,
        agent_id=agent_id,
        project_id=session.project_id,
        role=ChatMessage.Role.ASSISTANT,
        content=reply,
        create_session=False,
    )
    return ChatTurn(session=session, reply=reply)


@transaction.atomic
def _message_append(
    *,
    user: AbstractBaseUser,
    session_id: str,
    agent_id: str,
    project_id: str,
    role: str,
    content: str,
    create_session: bool = True,
) -> tuple[ChatSession, ChatMessage]:
    """Append one message to the session in one short transaction and return both.

    The session row is locked for the update, so concurrent turns on one session get gapless,
    unique sequence numbers (PostgreSQL: the row lock; SQLite: IMMEDIATE transactions serialise
    writers).
    """
    sessions = ChatSession.objects.select_for_update()
    key = {"owner": user, "agent_id": agent_id, "project_id": project_id, "session_id": session_id}
    if create_session:
        session, _ = sessions.get_or_create(**key)
    else:
        try:
            session = sessions.get(**key)
        except ChatSession.DoesNotExist:
            raise SessionGone(session_id) from None
    now = timezone.now()
    session.last_seq += 1
    session.last_activity_at = now
    session.updated_at = now
    if role == ChatMessage.Role.USER:
        session.user_turns += 1
    ChatSession.objects.filter(pk=session.pk).update(
        last_seq=session.last_seq,
        user_turns=session.user_turns,
        last_activity_at=now,
        updated_at=now,
    )
    message = ChatMessage.objects.create(
        session=session, seq=session.last_seq, role=role, content=content, agent_id=agent_id
    )
    return session, message


def session_delete(*, session: ChatSession) -> None:
    """Delete the session and its messages."""
    session.delete()
    logger.info("Deleted session %s", session.session_key)
