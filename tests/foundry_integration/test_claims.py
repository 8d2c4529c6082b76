"""Which sessions a sender claims for a sink: the pending ones that no live lease holds, whose
backoff is over and which import no other sink's thread, the longest due first. The claim is
one SQL statement; SinkState.objects.pending() and sync._due_states say the same in the ORM,
and these tests hold the two to each other. And what a sender leaves behind when it loses a
session it made a thread for. SQLite, and PostgreSQL in the second pass."""

import threading
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.db.transaction import TransactionManagementError
from django.utils import timezone

from sessions_app.models import ChatSession, RemoteDeletion, SinkState
from sessions_app.sinks import sink_get
from sessions_app.sync import ClaimLost, _due_states, claim_states, point_at, record_remote

pytestmark = pytest.mark.django_db(transaction=True)


def state(user, name: str, *, sink: str = "foundry", import_from: str = "", **fields) -> int:
    """A session `name` and its state on `sink`: pending (2 of 3 messages delivered), due a
    minute ago and unclaimed, except where `fields` say otherwise."""
    session = ChatSession.objects.create(
        owner=user,
        session_id=name,
        agent_id="agent",
        project_id="project",
        last_seq=3,
        history_import_from=import_from,
    )
    values = {
        "wanted_seq": 3,
        "delivered_seq": 2,
        "next_attempt_at": timezone.now() - timedelta(minutes=1),
        **fields,
    }
    return SinkState.objects.create(session=session, sink=sink, **values).pk


def test_only_the_due_states_are_claimed_and_leased(user, settings):
    now = timezone.now()
    due = {
        state(user, "due"),
        state(user, "lease-ran-out", claimed_by="dead", claimed_until=now - timedelta(seconds=1)),
        state(user, "imports-from-this-sink", import_from="foundry"),
    }
    not_due = {
        state(user, "delivered", delivered_seq=3),
        state(user, "leased", claimed_by="other", claimed_until=now + timedelta(minutes=1)),
        state(user, "backing-off", next_attempt_at=now + timedelta(minutes=1)),
        state(user, "other-sink", sink="zep"),
        state(user, "imports-from-zep", import_from="zep"),
    }
    # The ORM's definition, for the same rows.
    orm = set(
        _due_states("foundry", now)
        .filter(session__history_import_from__in=["", "foundry"])
        .values_list("id", flat=True)
    )
    assert orm == due

    claimed = claim_states(sink_name="foundry", worker="me", limit=10)

    assert {s.pk for s in claimed} == due
    assert all(s.claimed_by == "me" and s.session.session_id for s in claimed)
    for claimed_state in SinkState.objects.filter(pk__in=due):
        assert claimed_state.claimed_by == "me"
        lease = claimed_state.claimed_until - now
        assert timedelta(seconds=settings.SYNC_LEASE_S - 5) < lease
        assert lease < timedelta(seconds=settings.SYNC_LEASE_S + 5)
    untouched = SinkState.objects.filter(pk__in=not_due)
    assert set(untouched.values_list("claimed_by", flat=True)) <= {"", "other"}
    # Claimed now: nothing is due any more, for this sender or another.
    assert claim_states(sink_name="foundry", worker="another", limit=10) == []


def test_the_longest_due_are_claimed_first_up_to_the_limit(user):
    now = timezone.now()
    # Created in neither the order of age nor its reverse: the order of ids is not the point.
    ages = {"middle": 10, "newest": 1, "oldest": 30}
    ids = {
        name: state(user, name, next_attempt_at=now - timedelta(minutes=m))
        for name, m in ages.items()
    }

    first = claim_states(sink_name="foundry", worker="me", limit=2)
    assert {s.pk for s in first} == {ids["oldest"], ids["middle"]}
    (last,) = claim_states(sink_name="foundry", worker="me", limit=2)
    assert last.pk == ids["newest"]


def test_a_row_another_sender_is_claiming_is_skipped_not_waited_for(user):
    if not connection.features.has_select_for_update_skip_locked:
        pytest.skip("SQLite has no row locks: its writers queue for the database")
    locked, free = state(user, "locked"), state(user, "free")
    held, release = threading.Event(), threading.Event()

    def another_sender() -> None:
        try:
            with transaction.atomic():
                SinkState.objects.select_for_update().get(pk=locked)
                held.set()
                release.wait(10)
        finally:
            connection.close()

    thread = threading.Thread(target=another_sender)
    thread.start()
    try:
        assert held.wait(10)
        claimed = claim_states(sink_name="foundry", worker="me", limit=10)
    finally:
        release.set()
        thread.join(10)
    assert [s.pk for s in claimed] == [free]


def claimed_one(user, worker: str = "me") -> SinkState:
    state(user, "made-a-thread")
    (claimed,) = claim_states(sink_name="foundry", worker=worker, limit=10)
    return claimed


def test_a_thread_made_for_a_session_deleted_meanwhile_is_queued_for_deletion(user):
    claimed = claimed_one(user)
    ChatSession.objects.filter(pk=claimed.session_id).delete()
    with pytest.raises(ClaimLost):
        record_remote(claimed, sink_get("foundry"), "thread_orphan", "me")
    assert RemoteDeletion.objects.filter(sink="foundry", remote_id="thread_orphan").exists()


def test_a_thread_made_for_a_session_another_sender_took_is_queued_for_deletion(user):
    claimed = claimed_one(user)
    SinkState.objects.filter(pk=claimed.pk).update(claimed_by="another", remote_id="thread_theirs")
    with pytest.raises(ClaimLost):
        record_remote(claimed, sink_get("foundry"), "thread_orphan", "me")
    assert RemoteDeletion.objects.filter(remote_id="thread_orphan").exists()
    # The session keeps the other sender's thread.
    assert SinkState.objects.get(pk=claimed.pk).remote_id == "thread_theirs"
    assert ChatSession.objects.get(pk=claimed.session_id).foundry_thread_id is None


def test_pointing_a_session_at_a_thread_outside_a_transaction_is_refused(user):
    claimed = claimed_one(user)
    with pytest.raises(TransactionManagementError):
        point_at(state=claimed, sink=sink_get("foundry"), remote_id="thread_x")
