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
from sessions_app.sinks import sink_get
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


def test_turns_on_a_pending_session_leave_its_state_as_it_is(user, foundry_agents):
    turns(user, "busy", 3)
    state = state_of("busy")
    # Created with the first message; the five after it found the state pending.
    assert state.wanted_seq == 1
    assert (state.wanted_through, state.pending_count) == (6, 6)
    assert SinkState.objects.pending_messages() == 6


def test_on_sqlite_a_turn_on_a_pending_session_runs_nothing_on_its_state(user, foundry_agents):
    # There the turn's own write transaction excludes every sender, so the count of pending
    # states that its session update returns holds until it commits. On PostgreSQL the
    # turn's upsert, which locks the state, decides.
    turns(user, "quiet", 1)
    with CaptureQueriesContext(connection) as queries:
        turns(user, "quiet", 1)
    table = SinkState._meta.db_table
    on_states = [q["sql"] for q in queries.captured_queries if f'INTO "{table}"' in q["sql"]]
    assert len(on_states) == (0 if connection.vendor == "sqlite" else 2)
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
    turn_written, turn_may_commit = threading.Event(), threading.Event()
    outcome = {}

    def turn_held_open():
        try:
            with transaction.atomic():
                services.chat_turn(user=user, message="late", session_id="race")
                turn_written.set()
                assert turn_may_commit.wait(30)
        finally:
            connection.close()

    def record():
        try:
            ids = [f"msg_{m.seq}" for m in messages]
            seqs = [m.seq for m in messages]
            outcome["released"] = record_delivered(state, seqs, ids, "w", release_when_done=True)
        finally:
            connection.close()

    turn = threading.Thread(target=turn_held_open)
    turn.start()
    assert turn_written.wait(30)
    recorder = threading.Thread(target=record)
    recorder.start()
    recorder.join(0.5)
    assert recorder.is_alive(), "the batch was recorded while the turn was still writing"
    turn_may_commit.set()
    turn.join(30)
    recorder.join(30)
    assert outcome == {"released": False}
    assert (state.wanted_seq, state.delivered_seq) == (6, 4)
    assert ChatSession.objects.get(session_id="race").last_seq == 6


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
