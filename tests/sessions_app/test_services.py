import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from sessions_app import services
from sessions_app.agents import Agent
from sessions_app.models import ChatMessage, ChatSession

pytestmark = pytest.mark.django_db


class SilentAgent(Agent):
    def stream_reply(self, *, turn, history, message):
        yield from ()


class BrokenAgent(Agent):
    def stream_reply(self, *, turn, history, message):
        yield "half a "
        raise RuntimeError("model went away")


class RecreatingAgent(Agent):
    """Deletes its session and starts a new one under the same key while it replies."""

    def stream_reply(self, *, turn, history, message):
        session = ChatSession.objects.get(session_id="again")
        services.session_delete(session=session)
        ChatSession.objects.create(
            owner=session.owner,
            agent_id=session.agent_id,
            project_id=session.project_id,
            session_id=session.session_id,
        )
        yield "late reply"


@pytest.fixture
def odd_agents(settings):
    settings.CHAT_AGENTS = {
        **settings.CHAT_AGENTS,
        "silent": f"{__name__}.SilentAgent",
        "broken": f"{__name__}.BrokenAgent",
        "recreating": f"{__name__}.RecreatingAgent",
    }


@pytest.mark.parametrize("agent_id", ["silent", "broken"])
def test_a_failing_agent_keeps_the_message_and_answers_502(api, odd_agents, agent_id):
    response = api.post("/api/v1/chat", {"message": "hello", "agent_id": agent_id}, format="json")
    assert response.status_code == 502
    assert response.json()["code"] == "agent_failed"
    assert list(ChatMessage.objects.values_list("role", "content")) == [("user", "hello")]


def test_a_reply_never_lands_in_a_newer_session_under_the_same_key(user, odd_agents):
    with pytest.raises(services.SessionGone):
        services.chat_turn(user=user, message="older", session_id="again", agent_id="recreating")
    (newer,) = ChatSession.objects.filter(session_id="again")
    assert newer.last_seq == 0
    assert not newer.messages.exists()


def test_history_window_is_the_latest_messages_oldest_first(user, settings):
    settings.CHAT_HISTORY_WINDOW = 3
    for n in range(4):
        turn = services.chat_turn(user=user, message=f"m{n}", session_id="w")
    from sessions_app.selectors import session_history_window

    eighth = ChatMessage.objects.get(session=turn.session, seq=8)
    window = session_history_window(session=turn.session, before=eighth, limit=3)
    assert [(m.role, m.content) for m in window] == [
        ("user", "m2"),
        ("assistant", 'Turn 3: you said "m2". Earlier you said "m1".'),
        ("user", "m3"),
    ]
    assert turn.reply == 'Turn 4: you said "m3". Earlier you said "m2".'


def statements(ctx) -> list[str]:
    """The captured SQL without transaction control (BEGIN, COMMIT, SAVEPOINT ...)."""
    control = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")
    return [q["sql"] for q in ctx.captured_queries if not q["sql"].startswith(control)]


@pytest.mark.django_db(transaction=True)
def test_a_turn_runs_five_statements_and_a_rest_turn_one_more(user, api):
    """The hot path's cost is its statements: advance the session, insert the message (twice),
    read the history window; REST adds the token check. Nothing may load lazily on the way."""
    services.chat_turn(user=user, message="first", session_id="q")
    with CaptureQueriesContext(connection) as ctx:
        services.chat_turn(user=user, message="second", session_id="q")
    assert len(statements(ctx)) == 5, statements(ctx)
    api.post("/api/v1/chat", {"message": "third", "session_id": "q"}, format="json")
    with CaptureQueriesContext(connection) as ctx:
        response = api.post("/api/v1/chat", {"message": "fourth", "session_id": "q"}, format="json")
    assert response.status_code == 200
    assert len(statements(ctx)) == 6, statements(ctx)
