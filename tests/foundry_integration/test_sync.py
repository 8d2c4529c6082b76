"""Foundry thread persistence end to end: the chat service, the background sender and the real
azure-ai-agents SDK against the emulator."""

import asyncio
import logging
import threading
import time

import pytest
from django.utils import timezone

from foundry_integration.flag import forget_cached_flag
from sessions_app import services
from sessions_app.models import ChatSession, RemoteDeletion, SinkHealth, SinkState
from sessions_app.sinks import sink_get
from sessions_app.sync import Sender, pending_messages
from tests.foundry_integration.conftest import (
    PROJECT,
    drain,
    flag_settings,
    lose_thread,
    sync_pass,
    thread_exists,
    thread_messages,
    threads_created,
)

pytestmark = pytest.mark.django_db(transaction=True)


def turns(user, session_id: str, count: int, start: int = 0) -> list[str]:
    replies = []
    for n in range(start, start + count):
        turn = services.chat_turn(user=user, message=f"message {n}", session_id=session_id)
        replies.append(turn.reply)
    return replies


def expected_thread(replies: list[str], start: int = 0) -> list[tuple[str, str]]:
    pairs = []
    for n, reply in enumerate(replies, start=start):
        pairs += [("user", f"message {n}"), ("assistant", reply)]
    return pairs


def session(session_id: str) -> ChatSession:
    return ChatSession.objects.get(session_id=session_id)


def make_due() -> None:
    """Skip the backoff wait (tests do not sleep through it)."""
    SinkState.objects.update(next_attempt_at=timezone.now())
    RemoteDeletion.objects.update(next_attempt_at=timezone.now())
    SinkHealth.objects.update(open_until=None)


class TestFlagOff:
    def test_no_request_reaches_foundry(self, user, foundry, settings):
        settings.FLAGS = flag_settings(False)
        forget_cached_flag()
        turn = services.chat_turn(user=user, message="hello", session_id="off")
        sync_pass()
        assert turn.persistence == "local"
        assert turn.session.foundry_thread_id is None
        assert not SinkState.objects.exists()
        assert foundry.state.counters.total == 0


class TestLifecycle:
    def test_new_session_gets_a_thread_with_metadata(self, user, foundry, caplog):
        caplog.set_level(logging.INFO)
        first = services.chat_turn(user=user, message="hi", session_id="s1")
        # The answer does not wait for Foundry: the thread comes from the sender.
        assert first.persistence == "foundry"
        assert first.session.foundry_thread_id is None
        assert foundry.state.counters.total == 0
        drain()
        row = session("s1")
        store = foundry.state.store
        if row.foundry_thread_id.startswith("conv_"):
            thread = store.get_conversation(PROJECT, row.foundry_thread_id)
        else:
            thread = store.get_thread(PROJECT, row.foundry_thread_id)
        metadata = thread["metadata"]
        assert metadata == {
            "user_id": str(user.pk),
            "agent_id": "echo",
            "project_id": "default",
            "session_id": "s1",
            "created_at": row.created_at.isoformat(),
        }
        assert (
            f"Created Foundry thread {row.foundry_thread_id} for session "
            f"{user.pk}:echo:default:s1" in caplog.text
        )
        second = services.chat_turn(user=user, message="again", session_id="s1")
        assert second.session.foundry_thread_id == row.foundry_thread_id

    def test_every_turn_lands_in_order_and_once(self, user, foundry):
        replies = turns(user, "ordered", 25)
        drain()
        thread_id = session("ordered").foundry_thread_id
        assert thread_messages(foundry, thread_id) == expected_thread(replies)
        # More turns, more passes: still once each.
        replies += turns(user, "ordered", 5, start=25)
        drain()
        sync_pass()
        assert thread_messages(foundry, thread_id) == expected_thread(replies)
        state = SinkState.objects.get()
        assert state.delivered_seq == state.wanted_seq == 60
        assert state.receipts.count() == 60

    def test_batches_hold_several_messages(self, user, foundry, settings):
        settings.SYNC_BATCH_SIZE = 7
        turns(user, "batched", 10)
        sync_pass()
        # One pass delivers the whole backlog in batches (one create + 20 messages).
        assert threads_created(foundry) == 1
        assert len(thread_messages(foundry, session("batched").foundry_thread_id)) == 20
        # After the pass the claim is ended and the deliveries are counted.
        state = SinkState.objects.get()
        assert (state.delivered_seq, state.claimed_by, state.claimed_until) == (20, "", None)
        health = SinkHealth.objects.get()
        assert health.delivered_total == 20
        assert health.last_success_at is not None
        # A later turn goes out on the next pass.
        turns(user, "batched", 1, start=10)
        assert sync_pass() == 1
        assert SinkState.objects.get().delivered_seq == 22

    def test_conversation_continues_on_the_same_thread_after_a_restart(self, user, foundry):
        replies = turns(user, "restart", 3)
        drain()
        thread_id = session("restart").foundry_thread_id
        # A new process: nothing in memory, no cache, fresh sinks and sender.
        from django.core.cache import cache

        from sessions_app.sinks import _forget_sinks

        cache.clear()
        _forget_sinks()
        forget_cached_flag()
        later = services.chat_turn(user=user, message="message 3", session_id="restart")
        assert later.reply.startswith("Turn 4:")
        assert later.session.foundry_thread_id == thread_id
        drain()
        assert thread_messages(foundry, thread_id) == expected_thread([*replies, later.reply])

    def test_remotely_deleted_thread_is_replaced_and_refilled(self, user, foundry, caplog):
        replies = turns(user, "lost", 2)
        drain()
        old_thread = session("lost").foundry_thread_id
        assert lose_thread(foundry, old_thread)
        replies += turns(user, "lost", 1, start=2)
        drain()
        new_thread = session("lost").foundry_thread_id
        assert new_thread != old_thread
        assert f"Failed to load context from Foundry thread {old_thread}" in caplog.text
        assert thread_messages(foundry, new_thread) == expected_thread(replies)

    def test_session_delete_removes_the_thread(self, user, foundry):
        turns(user, "doomed", 2)
        drain()
        thread_id = session("doomed").foundry_thread_id
        services.session_delete(session=session("doomed"))
        assert RemoteDeletion.objects.get().remote_id == thread_id
        drain()
        assert not thread_exists(foundry, thread_id)
        assert not RemoteDeletion.objects.exists()

    def test_deleting_a_user_deletes_their_threads(self, user, foundry):
        turns(user, "first", 1)
        turns(user, "second", 1)
        drain()
        threads = {session(s).foundry_thread_id for s in ("first", "second")}
        user.delete()
        assert not ChatSession.objects.exists()
        assert set(RemoteDeletion.objects.values_list("remote_id", flat=True)) == threads
        drain()
        assert not any(thread_exists(foundry, thread_id) for thread_id in threads)

    def test_session_delete_is_retried_until_done(self, user, foundry):
        turns(user, "doomed", 1)
        drain()
        thread_id = session("doomed").foundry_thread_id
        services.session_delete(session=session("doomed"))
        foundry.state.fail_next = 3
        for _ in range(3):
            make_due()
            sync_pass()
        deletion = RemoteDeletion.objects.get()
        assert deletion.attempts == 3
        assert "500" in deletion.last_error
        make_due()
        drain()
        assert not thread_exists(foundry, thread_id)


class TestFaults:
    """Foundry down, failing, throttling or slow: the chat answers as usual, and the backlog is
    delivered once Foundry recovers, each message once, in order."""

    def assert_recovers(self, foundry, user, session_id: str, replies: list[str]) -> None:
        make_due()
        drain()
        thread_id = session(session_id).foundry_thread_id
        assert thread_messages(foundry, thread_id) == expected_thread(replies)

    def test_emulator_down(self, user, foundry, settings, caplog):
        port = foundry.port
        foundry.stop()
        replies = turns(user, "down", 3)
        sync_pass()
        state = SinkState.objects.get()
        assert state.attempts == 1
        assert state.remote_id is None
        assert "Foundry thread operation failed, falling back to" in caplog.text
        foundry.port = port
        foundry.start()
        self.assert_recovers(foundry, user, "down", replies)

    @pytest.mark.parametrize("knob", ["fail_next", "drop_next"])
    def test_errors_mid_conversation(self, user, foundry, caplog, knob):
        replies = turns(user, "flaky", 2)
        drain()
        thread_id = session("flaky").foundry_thread_id
        replies += turns(user, "flaky", 3, start=2)
        setattr(foundry.state, knob, 2)
        sync_pass()
        assert f"Failed to save context to Foundry thread {thread_id}" in caplog.text
        self.assert_recovers(foundry, user, "flaky", replies)

    def test_random_errors(self, user, foundry):
        foundry.state.configure_faults(error_rate=0.3, seed=7)
        replies = turns(user, "random", 10)
        deadline = time.monotonic() + 30
        while SinkState.objects.filter(delivered_seq__lt=20).exists():
            assert time.monotonic() < deadline
            make_due()
            sync_pass()
        assert SinkHealth.objects.get().failed_total > 0
        foundry.state.configure_faults(error_rate=0)
        self.assert_recovers(foundry, user, "random", replies)

    def test_429_waits_at_least_retry_after(self, user, foundry, settings):
        foundry.state.retry_after_s = 30
        foundry.state.throttle_next = 1
        turns(user, "throttled", 1)
        before = timezone.now()
        sync_pass()
        state = SinkState.objects.get()
        assert state.delivered_seq == 0
        assert (state.next_attempt_at - before).total_seconds() >= 29
        assert "429" in state.last_error

    def test_slow_foundry_does_not_slow_the_chat(self, user, foundry):
        foundry.state.latency_ms = 2000
        started = time.monotonic()
        replies = turns(user, "slow", 3)
        chat_seconds = time.monotonic() - started
        # Not a timing assertion on the chat: the emulator saw nothing while we chatted.
        assert foundry.state.counters.total == 0, chat_seconds
        foundry.state.latency_ms = 0
        self.assert_recovers(foundry, user, "slow", replies)

    def test_reads_that_time_out_are_retried(self, user, foundry, settings):
        settings.FOUNDRY_READ_TIMEOUT_S = 0.3
        foundry.state.latency_ms = 1000
        replies = turns(user, "timeout", 1)
        sync_pass()
        assert SinkState.objects.get().attempts == 1
        foundry.state.latency_ms = 0
        self.assert_recovers(foundry, user, "timeout", replies)

    def test_breaker_opens_and_stops_calling(self, user, foundry, settings):
        settings.SYNC_BREAKER_THRESHOLD = 3
        settings.SYNC_BREAKER_COOLDOWN_S = 60
        foundry.state.error_rate = 1.0
        for n in range(5):
            turns(user, f"b{n}", 1)
        sync_pass()
        health = SinkHealth.objects.get()
        assert health.consecutive_failures >= 3
        assert health.open_until > timezone.now()
        calls = foundry.state.counters.total
        SinkState.objects.update(next_attempt_at=timezone.now())
        sync_pass()
        assert foundry.state.counters.total == calls
        foundry.state.error_rate = 0
        SinkHealth.objects.update(open_until=timezone.now())
        # Half-open: one session is tried; its success closes the breaker.
        sync_pass()
        assert SinkHealth.objects.get().consecutive_failures == 0
        make_due()
        drain()


class TestCrashRecovery:
    def test_batch_interrupted_by_a_crash_is_not_sent_twice(self, user, foundry):
        """A sender that died after the remote side stored part of a batch, before it recorded
        the receipts: the next sender reconciles instead of sending those messages again."""
        replies = turns(user, "crash", 4)
        drain()
        thread_id = session("crash").foundry_thread_id
        replies += turns(user, "crash", 3, start=4)
        state = SinkState.objects.get()
        # What a killed sender leaves: the first 2 of 6 pending messages on the thread, no
        # receipts for them, the batch marked in flight and the claim held.
        pending = pending_messages(state, 100)
        sink = sink_get("foundry")

        async def send_two():
            await sink.append(remote_id=thread_id, messages=pending[:2])
            await sink.aclose()

        asyncio.run(send_two())
        SinkState.objects.filter(pk=state.pk).update(
            inflight_seq=pending[-1].seq,
            claimed_by="dead-worker",
            claimed_until=timezone.now() + timezone.timedelta(seconds=60),
        )
        sync_pass()
        assert len(thread_messages(foundry, thread_id)) == 10  # the claim is still held
        SinkState.objects.update(claimed_until=timezone.now())
        drain()
        assert thread_messages(foundry, thread_id) == expected_thread(replies)

    def test_two_senders_never_send_the_same_message(self, user, foundry):
        replies = {f"pair{n}": turns(user, f"pair{n}", 3) for n in range(6)}
        # Two senders as two processes would run them: each with its own event loop and clients.
        workers = [
            threading.Thread(target=sync_pass, args=(Sender(name=name),)) for name in ("a", "b")
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        drain()
        for session_id, session_replies in replies.items():
            thread_id = session(session_id).foundry_thread_id
            assert thread_messages(foundry, thread_id) == expected_thread(session_replies)
        assert threads_created(foundry) == 6


class TestClaims:
    def test_a_sender_that_lost_its_claim_writes_nothing(self, user, foundry):
        turns(user, "stolen", 2)
        from sessions_app.sync import claim_states

        (state,) = claim_states(sink_name="foundry", worker="slow", limit=1)
        # Its lease ran out and another sender took the row.
        SinkState.objects.update(claimed_by="fast")
        asyncio.run(Sender(name="slow").run_once_and_close())  # claims nothing: row is taken

        async def slow_sender_carries_on():
            sender = Sender(name="slow")
            try:
                await sender.deliver(sink_get("foundry"), state)
            finally:
                await sender.aclose()

        asyncio.run(slow_sender_carries_on())
        stolen = SinkState.objects.get()
        assert stolen.claimed_by == "fast"
        assert stolen.delivered_seq == 0
        assert not stolen.receipts.exists()

    def test_a_slow_batch_keeps_its_lease_alive(self, user, foundry, settings):
        # A lease long enough that a heartbeat (every third of it) may come late on a slow
        # host: at 0.3 s, one over 0.2 s late freed the row mid-batch, "b" took it, and
        # messages went out twice.
        settings.SYNC_LEASE_S = 1
        settings.SYNC_BATCH_SIZE = 10
        replies = turns(user, "slowbatch", 5)
        foundry.state.latency_ms = 300  # a 10-message batch takes ~3 s, over three leases
        workers = [
            threading.Thread(target=sync_pass, args=(Sender(name=name),)) for name in ("a", "b")
        ]
        workers[0].start()
        time.sleep(2)  # mid-batch, past where a's lease would end without its heartbeat
        workers[1].start()
        for worker in workers:
            worker.join()
        foundry.state.latency_ms = 0
        drain()
        thread_id = session("slowbatch").foundry_thread_id
        assert thread_messages(foundry, thread_id) == expected_thread(replies)

    def test_an_interrupted_batch_is_checked_before_the_rest_is_sent(
        self, user, foundry, caplog, settings
    ):
        caplog.set_level(logging.INFO)
        settings.SYNC_BATCH_SIZE = 40
        replies = turns(user, "partial", 1)
        drain()
        replies += turns(user, "partial", 12, start=1)
        # Seed 0 draws 0.84, then 0.76: the batch's first call succeeds, its second fails
        # (one message per call on the threads API, 20 items per call on conversations).
        foundry.state.configure_faults(error_rate=0.8, seed=0)
        sync_pass()
        state = SinkState.objects.get()
        assert 2 < state.delivered_seq < 26
        assert state.inflight_seq == 26
        foundry.state.configure_faults(error_rate=0)
        make_due()
        drain()
        thread_id = session("partial").foundry_thread_id
        assert "Reconciled Foundry thread" in caplog.text
        assert thread_messages(foundry, thread_id) == expected_thread(replies)
