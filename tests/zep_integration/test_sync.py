"""Zep memory end to end: the chat service, the background sender and both real Zep SDKs
(zep-cloud, zep-python) against the emulator."""

import pytest
from django.utils import timezone

from sessions_app import services
from sessions_app.models import RemoteDeletion, SinkState
from sessions_app.sync import Sender
from tests.foundry_integration.conftest import PacerProbe, drain, sync_pass
from tests.zep_integration.conftest import zep_messages
from zep_integration.models import ZepUser
from zep_integration.sink import pack_calls, split_content

pytestmark = pytest.mark.django_db(transaction=True)


def turns(user, session_id: str, count: int, start: int = 0) -> list[tuple[str, str]]:
    expected = []
    for n in range(start, start + count):
        turn = services.chat_turn(user=user, message=f"message {n}", session_id=session_id)
        expected += [("user", f"message {n}"), ("assistant", turn.reply)]
    return expected


def zep_state(session_id: str) -> SinkState:
    return SinkState.objects.get(sink="zep", session__session_id=session_id)


def make_due() -> None:
    SinkState.objects.update(next_attempt_at=timezone.now())
    RemoteDeletion.objects.update(next_attempt_at=timezone.now())


def test_off_without_url_or_key(user, settings, zep_emulator):
    settings.ZEP_API_URL = ""
    turn = services.chat_turn(user=user, message="hi", session_id="nozep")
    sync_pass()
    assert turn.persistence == "local"
    assert not SinkState.objects.exists()
    assert zep_emulator.state.counters.total == 0


def test_every_turn_arrives_once_and_in_order(user, zep):
    expected = turns(user, "z", 20)
    drain()
    state = zep_state("z")
    assert zep_messages(zep, state.remote_id) == expected
    expected += turns(user, "z", 3, start=20)
    drain()
    sync_pass()
    assert zep_messages(zep, state.remote_id) == expected
    # One Zep user per chat user, made once.
    turns(user, "z2", 1)
    drain()
    assert ZepUser.objects.count() == 1


def test_zep_is_independent_of_the_foundry_flag(user, zep, settings):
    settings.FLAGS = {"USE_FOUNDRY_THREADS": [{"condition": "boolean", "value": False}]}
    from foundry_integration.flag import forget_cached_flag

    forget_cached_flag()
    turn = services.chat_turn(user=user, message="hello", session_id="flagless")
    assert turn.persistence == "local"
    drain()
    assert len(zep_messages(zep, zep_state("flagless").remote_id)) == 2


def test_long_message_arrives_split_and_in_order(user, zep, settings):
    text = "".join(chr(ord("a") + n % 26) for n in range(6_000))
    services.chat_turn(user=user, message=text, session_id="long")
    drain()
    stored = zep_messages(zep, zep_state("long").remote_id)
    assert [len(content) for _, content in stored[:3]] == [2500, 2500, 1000]
    assert "".join(content for _, content in stored[:3]) == text
    assert stored[3][0] == "assistant"


@pytest.mark.parametrize(
    ("knob", "value"),
    [("fail_next", 2), ("drop_next", 2), ("throttle_next", 2), ("latency_ms", 3000)],
)
def test_faults_are_survived_with_nothing_lost(user, zep, knob, value):
    expected = turns(user, "faulty", 2)
    drain()
    expected += turns(user, "faulty", 2, start=2)
    zep.state.retry_after_s = 1
    setattr(zep.state, knob, value)
    sync_pass()
    state = zep_state("faulty")
    assert state.attempts == 1
    assert state.last_error
    setattr(zep.state, knob, 0)
    make_due()
    drain()
    assert zep_messages(zep, state.remote_id) == expected


def test_429_is_text_plain_and_waits_at_least_retry_after(user, zep, settings):
    zep.state.retry_after_s = 30
    zep.state.throttle_next = 1
    turns(user, "rate", 1)
    sync_pass()
    state = zep_state("rate")
    assert "429" in state.last_error
    # The delay the sender chose (both times are set at once), not counted from before the
    # pass: a slow host's pass would add its own length to the wait and break the bound below.
    wait = (state.next_attempt_at - state.last_error_at).total_seconds()
    if settings.ZEP_SDK == "cloud":
        assert wait >= 29
    else:
        # zep-python's errors carry no headers: the sender's own backoff applies instead.
        assert 0 < wait < 1


def test_zep_down(user, zep, settings):
    port = zep.port
    zep.stop()
    expected = turns(user, "down", 2)
    sync_pass()
    assert zep_state("down").attempts == 1
    zep.port = port
    zep.start()
    make_due()
    drain()
    assert zep_messages(zep, zep_state("down").remote_id) == expected


def test_delete_removes_the_remote_memory(user, zep):
    turns(user, "gone", 1)
    drain()
    remote_id = zep_state("gone").remote_id
    services.session_delete(session=zep_state("gone").session)
    drain()
    assert zep.state.store.messages_anywhere(remote_id) is None


def test_lost_thread_is_replaced_and_refilled(user, zep):
    expected = turns(user, "lost", 2)
    drain()
    old = zep_state("lost").remote_id
    zep.state.store.remove_thread_anywhere(old)
    expected += turns(user, "lost", 1, start=2)
    drain()
    new = zep_state("lost").remote_id
    assert new != old
    assert zep_messages(zep, new) == expected


def test_batch_cut_short_by_a_crash_is_not_sent_twice(user, zep):
    import asyncio

    from sessions_app.sinks import sink_get
    from sessions_app.sync import pending_messages

    expected = turns(user, "crash", 2)
    drain()
    expected += turns(user, "crash", 3, start=2)
    state = zep_state("crash")
    pending = pending_messages(state, 100)
    sink = sink_get("zep")

    async def send_two():
        await sink.append(remote_id=state.remote_id, messages=pending[:2])
        await sink.aclose()

    asyncio.run(send_two())
    SinkState.objects.filter(pk=state.pk).update(inflight_seq=pending[-1].seq)
    drain()
    assert zep_messages(zep, state.remote_id) == expected


def test_packing_keeps_a_message_in_one_call():
    from sessions_app.sinks import OutgoingMessage

    messages = [OutgoingMessage(n, "user", "x" * 5_001, "echo") for n in range(1, 13)]
    calls = list(pack_calls(messages, 2_500, 30))
    # Three parts each: ten messages fill a call, the other two go in the next.
    assert [len(parts) for _, parts in calls] == [30, 6]
    assert [m.seq for call, _ in calls for m in call] == list(range(1, 13))
    assert all(len({p.seq for p in parts}) == len(call) for call, parts in calls)
    assert split_content("", 10) == [""]
    assert split_content("abcdefghij", 4) == ["abcd", "efgh", "ij"]


def test_a_paced_sender_is_asked_before_each_call_of_a_batch(user, zep, settings):
    settings.ZEP_MAX_MESSAGES_PER_CALL = 2
    expected = turns(user, "paced", 3)
    probe = PacerProbe(zep)
    sync_pass(Sender(name="probed", pacer=probe))
    assert zep_messages(zep, zep_state("paced").remote_id) == expected
    # Before the delivery, then before the second and the third call of the batch (each call
    # is one request or, on the community SDK, two).
    assert len(probe.seen) == 3
    assert probe.seen[1] < probe.seen[2]
