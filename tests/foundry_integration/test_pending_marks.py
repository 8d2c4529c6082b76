"""How a turn marks its messages pending for the sinks, and how the sender finds the rest.

A turn writes a session's sink state only where that changes something: it creates the state,
or makes a delivered one pending. While the state is pending its `wanted_seq` stays where it
was, and the sender, on reaching it, raises it to the session's newest message. These tests
hold the two sides to that: no message is left behind, also when a turn commits while the
sender finishes a batch. SQLite, and PostgreSQL in the second pass."""

import threading

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from sessions_app import services
from sessions_app.models import ChatSession, SinkState
from sessions_app.sinks import active_sinks, sink_get
from sessions_app.sync import ClaimLost, claim_states, next_batch, record_delivered
from tests.foundry_integration.conftest import drain, thread_messages

pytestmark = pytest.mark.django_db(transaction=True)


def turns(user, session_id: str, count: int) -> None:
    for n in range(count):
        services.chat_turn(user=user, message=f"message {n}", session_id=session_id)


def state_of(session_id: str) -> SinkState:
    return SinkState.objects.select_related("session").get(session__session_id=session_id)


def claim(worker: str = "w") -> SinkState:
    (state,) = claim_states(sink_name="foundry", worker=worker, limit=10)
    return state


def deliver_batch(state: SinkState, worker: str = "w") -> bool:
    """One batch as the sender sends it (the remote ids made up: no remote call here)."""
    messages = next_batch(state, 50, worker)
    ids = [f"msg_{m.seq}" for m in messages]
    return record_delivered(state, [m.seq for m in messages], ids, worker, release_when_done=True)


def start_held_open(work) -> tuple[threading.Thread, threading.Event]:
    """Run `work` in a transaction in a thread of its own, which holds the transaction open
    after it until the returned event is set; returns once `work` has run."""
    done, may_commit = threading.Event(), threading.Event()

    def run():
        try:
            with transaction.atomic():
                work()
                done.set()
                assert may_commit.wait(30)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    assert done.wait(30)
    return thread, may_commit


def start_waiting(work) -> threading.Thread:
    """Run `work` in a thread of its own, and check that it waits (for a transaction held
    open)."""

    def run():
        try:
            work()
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(0.5)
    assert thread.is_alive(), "it did not wait for the transaction held open"
    return thread


def test_turns_on_a_pending_session_leave_its_state_as_it_is(user, foundry_agents):
    turns(user, "busy", 3)
    state = state_of("busy")
    # Created with the first message; the five after it found the state pending.
    assert state.wanted_seq == 1
    assert (state.wanted_through, state.pending_count) == (6, 6)
    assert SinkState.objects.pending_messages() == 6


def test_a_turn_on_a_pending_session_runs_nothing_on_its_state(user, foundry_agents):
    # The count of pending states that its message's INSERT returns holds until it commits:
    # the turn holds the session row, without which no sender finishes a state.
    turns(user, "quiet", 1)
    with CaptureQueriesContext(connection) as queries:
        turns(user, "quiet", 1)
    into_states = f'INSERT INTO "{SinkState._meta.db_table}"'
    assert [q["sql"] for q in queries.captured_queries if q["sql"].startswith(into_states)] == []
    assert state_of("quiet").pending_count == 4


def test_a_new_state_has_the_models_defaults(user, foundry_agents):
    turns(user, "new", 1)
    state = state_of("new")
    fresh = SinkState()
    for field in SinkState._meta.concrete_fields:
        if field.attname not in ("id", "session_id", "sink", "wanted_seq", "next_attempt_at"):
            assert getattr(state, field.attname) == getattr(fresh, field.attname), field.name
    assert state.next_attempt_at <= fresh.next_attempt_at


def test_a_delivered_session_is_pending_again_with_its_next_turn(user, foundry_agents):
    turns(user, "again", 1)
    drain()
    state = state_of("again")
    assert (state.wanted_seq, state.delivered_seq, state.pending_count) == (2, 2, 0)
    turns(user, "again", 1)
    state = state_of("again")
    assert (state.wanted_seq, state.wanted_through, state.pending_count) == (3, 4, 2)
    drain()
    state = state_of("again")
    assert (state.wanted_seq, state.delivered_seq) == (4, 4)
    texts = [text for _, text in thread_messages(foundry_agents, state.remote_id)]
    assert texts[::2] == ["message 0", "message 0"]


def test_messages_added_during_a_delivery_go_out_in_the_same_claim(user, foundry_agents):
    turns(user, "during", 2)
    state = claim()
    messages = next_batch(state, 50, "w")
    assert [m.seq for m in messages] == [1, 2, 3, 4]
    turns(user, "during", 1)  # while the batch is on its way
    ids = [f"msg_{m.seq}" for m in messages]
    released = record_delivered(state, [1, 2, 3, 4], ids, "w", release_when_done=True)
    assert not released
    assert (state.wanted_seq, state.delivered_seq) == (6, 4)
    assert deliver_batch(state)  # messages 5 and 6, and the claim ends
    stored = SinkState.objects.get(pk=state.pk)
    assert (stored.wanted_seq, stored.delivered_seq, stored.claimed_by) == (6, 6, "")


def test_a_turn_still_writing_is_seen_by_the_batch_that_ends_the_claim(user, foundry_agents):
    """The race the design must close: a turn finds the state pending (so writes nothing to it)
    while the sender records the batch that reaches `wanted_seq`. The sender waits for the
    turn's transaction (PostgreSQL: the session row's lock; SQLite: the write lock) and so
    sees its messages; otherwise the state would end delivered with them left behind."""
    turns(user, "race", 2)
    state = claim()
    messages = next_batch(state, 50, "w")
    ids, seqs = [f"msg_{m.seq}" for m in messages], [m.seq for m in messages]
    outcome = {}
    turn, turn_may_commit = start_held_open(
        lambda: services.chat_turn(user=user, message="late", session_id="race")
    )
    try:
        recorder = start_waiting(
            lambda: outcome.update(
                released=record_delivered(state, seqs, ids, "w", release_when_done=True)
            )
        )
    finally:
        turn_may_commit.set()  # also when the check failed: the thread's transaction ends
    turn.join(30)
    recorder.join(30)
    assert outcome == {"released": False}
    assert (state.wanted_seq, state.delivered_seq) == (6, 4)
    assert ChatSession.objects.get(session_id="race").last_seq == 6


def test_a_turn_waiting_for_the_batch_that_ends_the_claim_marks_its_messages(user, foundry_agents):
    """The same race the other way round: the sender records the batch that reaches
    `wanted_seq` (and finishes the state) while a turn waits to write to the session. The turn
    must find the state finished, not pending as it was when its first statement began (on
    PostgreSQL the session UPDATE's snapshot predates the sender's commit), and mark its
    messages pending; otherwise they would be left behind."""
    turns(user, "other-way", 2)
    state = claim()
    messages = next_batch(state, 50, "w")
    ids, seqs = [f"msg_{m.seq}" for m in messages], [m.seq for m in messages]
    session = ChatSession.objects.get(session_id="other-way")
    key = {
        "owner": user,
        "agent_id": session.agent_id,
        "project_id": session.project_id,
        "session_id": "other-way",
    }
    outcome = {}
    recorder, sender_may_commit = start_held_open(
        lambda: outcome.update(
            released=record_delivered(state, seqs, ids, "w", release_when_done=True)
        )
    )
    try:
        # One message (a turn's reply, say): the turn's other message must not cover for it.
        late = start_waiting(
            lambda: services._message_append(
                key=key,
                sinks=active_sinks(),
                role="assistant",
                content="late",
                session_pk=session.pk,
            )
        )
    finally:
        sender_may_commit.set()  # also when the check failed: the thread's transaction ends
    recorder.join(30)
    late.join(30)
    assert outcome == {"released": True}
    stored = state_of("other-way")
    assert (stored.delivered_seq, stored.wanted_through, stored.pending_count) == (4, 5, 1)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's isolation level")
def test_postgresql_runs_read_committed():
    # _insert_sql's pending count needs each statement's own snapshot.
    with connection.cursor() as cursor:
        cursor.execute("SHOW transaction_isolation")
        assert cursor.fetchone()[0] == "read committed"


def test_a_batch_short_of_wanted_seq_leaves_it_as_others_set_it(user, foundry_agents):
    # An import (history_insert) or a resend may raise wanted_seq while a sender holds the
    # claim; recording a batch that did not reach it writes only what the sender changed.
    turns(user, "shifted", 3)
    state = claim()
    SinkState.objects.filter(pk=state.pk).update(wanted_seq=6)
    state.wanted_seq = 6
    messages = next_batch(state, 2, "w")
    SinkState.objects.filter(pk=state.pk).update(wanted_seq=9)  # meanwhile
    ids = [f"msg_{m.seq}" for m in messages]
    assert not record_delivered(state, [1, 2], ids, "w", release_when_done=True)
    stored = SinkState.objects.get(pk=state.pk)
    assert (stored.wanted_seq, stored.delivered_seq) == (9, 2)


def test_a_resend_wants_the_session_as_it_is_not_as_the_caller_read_it(user, foundry_agents):
    turns(user, "resend", 1)
    drain()
    stale = ChatSession.objects.get(session_id="resend")
    turns(user, "resend", 2)  # four more messages since `stale` was read
    services.session_sync_restart(session=stale, sink=sink_get("foundry"))
    state = state_of("resend")
    assert (state.wanted_seq, state.delivered_seq, state.remote_id) == (6, 0, None)
    drain()
    assert state_of("resend").delivered_seq == 6


def test_a_resend_takes_the_claim_from_a_sender_delivering_meanwhile(user, foundry_agents):
    turns(user, "taken", 2)
    state = claim()
    messages = next_batch(state, 50, "w")
    services.session_sync_restart(
        session=ChatSession.objects.get(session_id="taken"), sink=sink_get("foundry")
    )
    ids = [f"msg_{m.seq}" for m in messages]
    with pytest.raises(ClaimLost):  # what it sent went to the old thread
        record_delivered(state, [m.seq for m in messages], ids, "w", release_when_done=True)
    stored = state_of("taken")
    assert (stored.remote_id, stored.delivered_seq, stored.pending_count) == (None, 0, 4)
