"""The sender inside a server process gives way to the turns: while the rest of the process is
busy it keeps to SYNC_IN_PROCESS_CPU_SHARE of the CPU, and it runs at full speed otherwise."""

import asyncio
import threading
import time

import pytest

from sessions_app import services, sync
from sessions_app.models import ChatSession, SinkState
from sessions_app.sync import CpuPacer, Sender, ThreadClocks
from tests.foundry_integration.conftest import PacerProbe, sync_pass, thread_messages

pytestmark = pytest.mark.django_db(transaction=True)


class Clocks:
    """Readings a test sets: wall time, the process's CPU and the sender's own CPU."""

    def __init__(self) -> None:
        self.wall = self.process = self.own = 0.0

    def pacer(self, share: float) -> CpuPacer:
        return CpuPacer(
            share,
            own_cpu=lambda: self.own,
            process_cpu=lambda: self.process,
            clock=lambda: self.wall,
        )

    def spend(self, seconds: float, *, others: float, own: float = 0.0) -> None:
        self.wall += seconds
        self.process += others + own
        self.own += own


class TestCpuPacer:
    def test_a_saturated_process_holds_the_sender_to_its_share(self):
        clocks = Clocks()
        pacer = clocks.pacer(0.05)
        clocks.spend(0.5, others=0.45, own=0.05)  # the sender has had a tenth of a CPU
        assert pacer.delay() == CpuPacer.MAX_DELAY_S
        # Its 0.05 s spread over a second is its share: it may go on.
        clocks.spend(0.55, others=0.5)
        assert pacer.delay() == 0

    def test_the_sender_may_use_what_the_others_leave_idle(self):
        clocks = Clocks()
        pacer = clocks.pacer(0.05)
        # The others use 0.3 of a CPU and the sender 0.1, 0.05 past its share: it may use
        # 1 - 0.25 (headroom) - 0.3 - 0.05 = 0.4.
        clocks.spend(1.0, others=0.3, own=0.1)
        assert pacer.delay() == 0
        # 0.45 s in 1.25 s, with the others at 0.35 s: what it used past its share counts as
        # theirs, (0.35 + 0.45 - 0.0625) / 1.25 = 0.59, leaving it 0.16 of a CPU: held back.
        clocks.spend(0.25, others=0.05, own=0.35)
        assert pacer.delay() == CpuPacer.MAX_DELAY_S

    def test_a_process_short_of_a_cpu_does_not_look_idle(self):
        # A busy process that got 0.75 of a CPU (a busy host, the interpreter's lock changing
        # hands), a fifth of it to the sender. Counted as the others' own, 0.55 would leave the
        # sender 0.2; what it took past its share was theirs, so it is held back.
        clocks = Clocks()
        pacer = clocks.pacer(0.05)
        clocks.spend(1.0, others=0.55, own=0.2)
        assert pacer.delay() == CpuPacer.MAX_DELAY_S

    def test_an_idle_process_does_not_hold_the_sender_back(self):
        clocks = Clocks()
        pacer = clocks.pacer(0.05)
        clocks.spend(0.5, others=0.02, own=0.15)
        assert pacer.delay() == 0

    def test_old_load_is_forgotten_after_a_window(self):
        clocks = Clocks()
        pacer = clocks.pacer(0.05)
        clocks.spend(1.0, others=1.0)
        assert pacer.delay() == 0
        # The load has ended: the busy second no longer counts, so the sender is not held back
        # (measured from the start it would be: 0.35 s at 0.125 of a CPU).
        clocks.spend(1.0, others=0.0, own=0.35)
        assert pacer.delay() == 0


def burn_cpu(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        sum(range(1000))


class TestThreadClocks:
    def test_the_cpu_of_the_added_threads_only(self):
        clocks = ThreadClocks()
        burnt, read = threading.Event(), threading.Event()

        def worker():
            clocks.add_current_thread()
            burn_cpu(0.1)
            burnt.set()
            read.wait()

        thread = threading.Thread(target=worker)
        thread.start()
        burn_cpu(0.1)  # this thread's CPU is not counted
        burnt.wait()
        seen = clocks.seconds()
        read.set()
        thread.join()
        assert 0.1 <= seen < 0.15
        # The thread has ended: the sum does not go back.
        time.sleep(0.05)
        assert clocks.seconds() >= seen


def thread_cpu(prefix: str) -> float:
    """The CPU time of the live threads whose name starts with `prefix`."""
    return sum(
        time.clock_gettime(time.pthread_getcpuclockid(t.ident))
        for t in threading.enumerate()
        if t.name.startswith(prefix)
    )


def delivered() -> int:
    return sum(s.delivered_seq for s in SinkState.objects.all())


BUSY_S = 2.5  # how long the server is kept busy and the sender's share measured


class TestInProcessSender:
    def test_a_busy_server_holds_its_sender_back_and_an_idle_one_does_not(
        self, user, foundry_agents, settings
    ):
        settings.SYNC_IN_PROCESS_CPU_SHARE = 0.05
        settings.SYNC_POLL_INTERVAL_S = 0.05
        settings.SYNC_BATCH_SIZE = 2  # a turn's two messages, as a busy server's are
        # A server has its SDKs loaded before it serves (SINK_WARM_UP): load them now.
        services.chat_turn(user=user, message="warm up", session_id="warm")
        sync_pass()
        for n in range(300):
            services.chat_turn(user=user, message=f"message {n}", session_id=f"s{n % 30}")
        wanted = 602
        stop_burning, stop_sender = threading.Event(), threading.Event()

        def serve():
            # A server's request threads, busy the whole time: each request ends in I/O, where
            # the interpreter's lock goes to the thread that waits for it.
            while not stop_burning.is_set():
                burn_cpu(0.001)
                time.sleep(0)

        server = threading.Thread(target=serve, name="busy-server")
        sender = threading.Thread(
            target=sync._run_in_process, args=(stop_sender,), name="sync-sender"
        )
        server.start()
        sender.start()
        try:
            time.sleep(0.5)  # past the sender's start-up
            process, own = time.process_time(), thread_cpu("sync-sender")
            time.sleep(BUSY_S)
            process, own = time.process_time() - process, thread_cpu("sync-sender") - own
            busy_delivered = delivered()
            stop_burning.set()
            server.join()
            deadline = time.monotonic() + 30
            while delivered() < wanted:
                assert time.monotonic() < deadline, f"{delivered()} of {wanted} delivered"
                time.sleep(0.05)
        finally:
            stop_burning.set()
            stop_sender.set()
            sync.notify_sender()
            sender.join(timeout=10)
        # Paced, not stopped: some of the backlog went out while the server was busy.
        assert 0 < busy_delivered < wanted
        session = ChatSession.objects.get(session_id="s7")
        assert len(thread_messages(foundry_agents, session.foundry_thread_id)) == 20
        if process / BUSY_S < 0.85:
            # The pacer reads "busy" from CPU time: a process the host keeps well short of a CPU
            # looks partly idle to it, and its share cannot be judged here.
            pytest.skip(f"the process got only {process / BUSY_S:.2f} of a CPU: the host is busy")
        # 5%, give or take the calls that were already on their way when the pacer checked.
        assert own / process < 0.12, (own, process)


def test_the_sender_waits_for_its_share_before_each_delivery(user, foundry_agents):
    """With scripted clocks: a pass held back delivers nothing until the others catch up."""
    services.chat_turn(user=user, message="hello", session_id="held")
    clocks = Clocks()
    sender = Sender(name="paced", pacer=clocks.pacer(0.05))
    clocks.spend(1.0, others=0.8, own=0.2)  # twice what it may have: 0.1 of a CPU

    async def scenario():
        task = asyncio.create_task(sender.run_once_and_close())
        await asyncio.sleep(0.6)
        held = foundry_agents.state.counters.total, task.done()
        clocks.spend(2.0, others=1.8)  # it has used nothing in the last window
        await asyncio.wait_for(task, 10)
        return held

    assert asyncio.run(scenario()) == (0, False)
    assert SinkState.objects.get().delivered_seq == 2


def test_the_sender_waits_for_its_share_before_each_call_of_a_batch(user, foundry, settings):
    """A backlog goes out in batches of up to SYNC_BATCH_SIZE messages, and on the classic API
    each message is a call of its own: the pacer is asked before every call, not once a batch."""
    settings.SYNC_BATCH_SIZE = 50
    for n in range(23):
        services.chat_turn(user=user, message=f"message {n}", session_id="long")
    probe = PacerProbe(foundry)
    sync_pass(Sender(name="probed", pacer=probe))
    session = ChatSession.objects.get(session_id="long")
    assert len(thread_messages(foundry, session.foundry_thread_id)) == 46
    calls = 46 if settings.FOUNDRY_THREAD_API == "agents" else 3  # 20 items a call
    # Asked before the delivery, then (after the thread's creation and the first call) before
    # each further call, one call apart.
    assert len(probe.seen) == calls
    gaps = [b - a for a, b in zip(probe.seen[1:], probe.seen[2:], strict=False)]
    assert gaps == [1] * (calls - 2)
