"""Which sessions a sender claims for a sink: the pending ones that no live lease holds, whose
backoff is over and which import no other sink's thread, the longest due first. The claim is
one SQL statement; SinkState.objects.pending() and sync._due_states say the same in the ORM,
and these tests hold the two to each other. SQLite, and PostgreSQL in the second pass."""

from datetime import timedelta

import pytest
from django.utils import timezone

from sessions_app.models import ChatSession, SinkState
from sessions_app.sync import _due_states, claim_states

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
