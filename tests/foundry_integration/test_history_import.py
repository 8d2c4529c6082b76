"""A session pointed at an existing Foundry thread (a fresh database, an import) gets that
history from its next turn on (at once for a short thread, through the sender for a longer one),
then carries on on the same thread."""

import asyncio
import logging

import pytest
from django.core.management import call_command
from django.utils import timezone

from sessions_app import remote_history, services
from sessions_app.models import ChatMessage, ChatSession, SinkState
from sessions_app.sinks import OutgoingMessage, SessionInfo, sink_get
from sessions_app.sync import Sender, claim_states
from tests.foundry_integration.conftest import drain, lose_thread, sync_pass, thread_messages

pytestmark = pytest.mark.django_db(transaction=True)


def remote_thread(turns: int) -> str:
    """A thread made elsewhere, holding `turns` user/assistant pairs."""
    sink = sink_get("foundry")
    messages = []
    for n in range(turns):
        messages += [
            OutgoingMessage(2 * n + 1, "user", f"old question {n}", "echo"),
            OutgoingMessage(2 * n + 2, "assistant", f"old answer {n}", "echo"),
        ]

    async def make() -> str:
        try:
            info = SessionInfo("x", "echo", "default", "elsewhere", timezone.now())
            thread_id = await sink.create_remote(session=info)
            await sink.append(remote_id=thread_id, messages=messages)
            return thread_id
        finally:
            await sink.aclose()

    return asyncio.run(make())


def history(session_id: str) -> list[tuple[int, str, str]]:
    return list(
        ChatMessage.objects.filter(session__session_id=session_id)
        .order_by("seq")
        .values_list("seq", "role", "content")
    )


def test_next_turn_loads_the_thread_then_continues_on_it(user, foundry, caplog):
    caplog.set_level(logging.INFO)
    thread_id = remote_thread(30)
    call_command("foundry_import_thread", "alice", "imported", thread_id)
    session = ChatSession.objects.get(session_id="imported")
    assert session.foundry_thread_id == thread_id

    turn = services.chat_turn(user=user, message="new question", session_id="imported")
    assert turn.reply == 'Turn 31: you said "new question". Earlier you said "old question 29".'
    assert f"Loaded context from Foundry thread {thread_id}: 60 messages" in caplog.text
    rows = history("imported")
    assert [seq for seq, _, _ in rows] == list(range(1, 63))
    assert rows[0] == (1, "user", "old question 0")
    assert rows[60] == (61, "user", "new question")
    drain()
    on_thread = thread_messages(foundry, thread_id)
    assert len(on_thread) == 62
    assert on_thread[-2:] == [("user", "new question"), ("assistant", turn.reply)]


def test_foundry_down_the_turn_goes_on_locally_and_the_next_one_loads(
    user, foundry, caplog, settings
):
    # A backoff that outlasts the test's own steps: `foundry` caps it at 50 ms, which a slow
    # host can spend between the failed load and the sender pass below.
    settings.SYNC_BACKOFF_BASE_S = 60
    settings.SYNC_BACKOFF_MAX_S = 60
    thread_id = remote_thread(2)
    call_command("foundry_import_thread", "alice", "later", thread_id)
    foundry.state.fail_next = 1
    first = services.chat_turn(user=user, message="while down", session_id="later")
    # The turn number is not known while the older history is not local.
    assert first.reply == 'You said "while down".'
    assert "Foundry thread operation failed, falling back to local storage" in caplog.text
    sync_pass()  # backing off: neither an import nor anything sent to the thread
    assert len(thread_messages(foundry, thread_id)) == 4

    # The failed load backs off; once that is over, the next turn loads the history.
    SinkState.objects.update(next_attempt_at=timezone.now())
    second = services.chat_turn(user=user, message="back up", session_id="later")
    assert second.reply.startswith("Turn 4:")
    assert [content for _, _, content in history("later")] == [
        "old question 0",
        "old answer 0",
        "old question 1",
        "old answer 1",
        "while down",
        first.reply,
        "back up",
        second.reply,
    ]
    drain()
    assert [c for _, c in thread_messages(foundry, thread_id)] == [
        c for _, _, c in history("later")
    ]


def test_missing_thread_gets_a_new_one_with_the_local_history(user, foundry, caplog):
    call_command("foundry_import_thread", "alice", "ghost", "thread_doesnotexist000000000")
    turn = services.chat_turn(user=user, message="hello", session_id="ghost")
    assert turn.reply.startswith("Turn 1:")
    assert "Failed to load context from Foundry thread thread_doesnotexist" in caplog.text
    drain()
    session = ChatSession.objects.get(session_id="ghost")
    assert session.foundry_thread_id.startswith(("thread_", "conv_"))
    assert thread_messages(foundry, session.foundry_thread_id) == [
        ("user", "hello"),
        ("assistant", turn.reply),
    ]


def test_import_refuses_unknown_user_and_bad_ids(user):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="No user"):
        call_command("foundry_import_thread", "nobody", "s", "thread_x")
    with pytest.raises(CommandError, match="letters, digits"):
        call_command("foundry_import_thread", "alice", "bad id", "thread_x")


def test_two_first_turns_racing_import_once(user, foundry):
    from sessions_app.sinks import active_sinks

    thread_id = remote_thread(1)
    call_command("foundry_import_thread", "alice", "racing", thread_id)
    stale = ChatSession.objects.get(session_id="racing")
    services.chat_turn(user=user, message="first tab", session_id="racing")
    # The second tab loaded the thread too, before the first one's import committed.
    remote_history.import_pending(session=stale, sinks=active_sinks())
    assert [c for _, _, c in history("racing")][:3] == [
        "old question 0",
        "old answer 0",
        "first tab",
    ]
    assert len(history("racing")) == 4


def test_deleting_an_imported_thread_leaves_a_working_session(user, foundry):
    from sessions_app.sinks import sink_get

    thread_id = remote_thread(1)
    call_command("foundry_import_thread", "alice", "dropped", thread_id)
    session = ChatSession.objects.get(session_id="dropped")
    assert services.session_remote_delete(session=session, sink=sink_get("foundry")) == thread_id
    turn = services.chat_turn(user=user, message="still works", session_id="dropped")
    assert turn.reply.startswith("Turn 1:")
    drain()
    new_thread = ChatSession.objects.get(session_id="dropped").foundry_thread_id
    assert new_thread != thread_id
    assert thread_messages(foundry, new_thread) == [
        ("user", "still works"),
        ("assistant", turn.reply),
    ]


def test_import_waits_while_foundry_is_failing(user, foundry, settings):
    settings.SYNC_BACKOFF_BASE_S = 60
    settings.SYNC_BACKOFF_MAX_S = 60
    thread_id = remote_thread(1)
    call_command("foundry_import_thread", "alice", "patient", thread_id)
    foundry.state.fail_next = 1
    services.chat_turn(user=user, message="one", session_id="patient")
    calls = foundry.state.counters.total
    services.chat_turn(user=user, message="two", session_id="patient")
    # Backing off: the second turn did not call Foundry again.
    assert foundry.state.counters.total == calls


def reads(emulator) -> int:
    return sum(n for route, n in emulator.state.counters.by_route.items() if route[:4] == "GET ")


def test_a_long_thread_costs_the_turn_one_read_and_loads_in_the_background(user, foundry, caplog):
    caplog.set_level(logging.INFO)
    thread_id = remote_thread(60)  # 120 messages: more than one page
    call_command("foundry_import_thread", "alice", "long", thread_id)
    before = reads(foundry)

    turn = services.chat_turn(user=user, message="new question", session_id="long")
    # The newest page is the agent's context; the turn count waits for the whole thread.
    assert turn.reply == 'You said "new question". Earlier you said "old question 59".'
    assert reads(foundry) == before + 1
    loaded = f"Loaded context from Foundry thread {thread_id}: 100 messages (the newest"
    assert loaded in caplog.text
    assert [content for _, _, content in history("long")] == ["new question", turn.reply]

    drain()  # the sender reads the whole thread, puts it first, then sends the new turn
    rows = history("long")
    assert [seq for seq, _, _ in rows] == list(range(1, 123))
    assert rows[0] == (1, "user", "old question 0")
    assert rows[119] == (120, "assistant", "old answer 59")
    assert rows[120:] == [(121, "user", "new question"), (122, "assistant", turn.reply)]
    assert thread_messages(foundry, thread_id) == [(role, content) for _, role, content in rows]

    before = reads(foundry)
    later = services.chat_turn(user=user, message="and now", session_id="long")
    assert later.reply == 'Turn 62: you said "and now". Earlier you said "new question".'
    assert reads(foundry) == before  # the history is local now


def test_turns_before_the_background_import_each_land_once(user, foundry):
    thread_id = remote_thread(60)
    call_command("foundry_import_thread", "alice", "busy", thread_id)
    first = services.chat_turn(user=user, message="one", session_id="busy")
    second = services.chat_turn(user=user, message="two", session_id="busy")
    assert second.reply == 'You said "two". Earlier you said "one".'
    drain()
    rows = history("busy")
    assert [seq for seq, _, _ in rows] == list(range(1, 125))
    assert [content for _, _, content in rows[120:]] == ["one", first.reply, "two", second.reply]
    assert thread_messages(foundry, thread_id) == [(role, content) for _, role, content in rows]


def test_background_import_retries_a_failed_read(user, foundry, caplog):
    thread_id = remote_thread(60)
    call_command("foundry_import_thread", "alice", "flaky", thread_id)
    services.chat_turn(user=user, message="hello", session_id="flaky")
    foundry.state.fail_next = 1
    sync_pass()
    assert "falling back to local storage: HTTP 500" in caplog.text
    assert f"(loading the history of thread {thread_id}; retry in" in caplog.text
    assert len(history("flaky")) == 2
    assert SinkState.objects.get().attempts == 1
    drain()
    assert len(history("flaky")) == 122
    assert len(thread_messages(foundry, thread_id)) == 122


def test_background_import_of_a_lost_thread_starts_a_new_one(user, foundry, caplog):
    thread_id = remote_thread(60)
    call_command("foundry_import_thread", "alice", "vanished", thread_id)
    turn = services.chat_turn(user=user, message="hello", session_id="vanished")
    assert lose_thread(foundry, thread_id)
    drain()
    assert f"Failed to load context from Foundry thread {thread_id}" in caplog.text
    session = ChatSession.objects.get(session_id="vanished")
    assert session.foundry_thread_id not in (None, thread_id)
    assert session.history_import_from == ""
    assert thread_messages(foundry, session.foundry_thread_id) == [
        ("user", "hello"),
        ("assistant", turn.reply),
    ]


def test_a_sender_holding_old_session_data_does_not_import_twice(user, foundry):
    thread_id = remote_thread(2)
    call_command("foundry_import_thread", "alice", "stale", thread_id)
    # The sender's claim stays valid; what it read with it (the session to import) goes stale.
    foundry.state.fail_next = 1
    services.chat_turn(user=user, message="while down", session_id="stale")
    SinkState.objects.update(next_attempt_at=timezone.now())
    sender = Sender(name="stale-sender")
    [state] = claim_states(sink_name="foundry", worker=sender.name, limit=10)
    assert state.session.history_import_from == "foundry"
    # Meanwhile the next turn imports the short thread itself.
    services.chat_turn(user=user, message="back up", session_id="stale")

    async def deliver() -> None:
        try:
            await sender.deliver(sink_get("foundry"), state)
        finally:
            await sender.aclose()

    asyncio.run(deliver())
    drain()
    rows = history("stale")
    assert len(rows) == 8
    assert thread_messages(foundry, thread_id) == [(role, content) for _, role, content in rows]


def test_an_import_finishing_during_a_turn_leaves_its_context_right(user, foundry, monkeypatch):
    thread_id = remote_thread(60)
    call_command("foundry_import_thread", "alice", "racing-import", thread_id)
    services.chat_turn(user=user, message="one", session_id="racing-import")
    read_newest_page = remote_history.import_pending

    def then_the_sender_imports(**kwargs):
        result = read_newest_page(**kwargs)
        drain()  # the whole thread goes in, renumbering every message, before the turn reads
        return result

    monkeypatch.setattr(remote_history, "import_pending", then_the_sender_imports)
    second = services.chat_turn(user=user, message="two", session_id="racing-import")
    assert second.reply == 'You said "two". Earlier you said "one".'
    rows = history("racing-import")
    assert [content for _, _, content in rows[120:]][-2:] == ["two", second.reply]
    assert len(rows) == 124


def test_a_turn_reading_the_thread_wakes_the_sender_only_with_its_reply(user, foundry, monkeypatch):
    from sessions_app import sync

    thread_id = remote_thread(60)
    call_command("foundry_import_thread", "alice", "quiet", thread_id)
    wakes = []
    real_read = remote_history.import_pending

    def read_and_note_the_wake(**kwargs):
        # Woken now, the sender would read the same thread while this turn reads it.
        wakes.append(sync._wake.is_set())
        return real_read(**kwargs)

    monkeypatch.setattr(remote_history, "import_pending", read_and_note_the_wake)
    sync._wake.clear()
    services.chat_turn(user=user, message="hello", session_id="quiet")
    assert wakes == [False]
    assert sync._wake.is_set()  # the reply's commit woke it
