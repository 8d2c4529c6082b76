"""The sender inside a server process gives way to the turns: while the rest of the process is
busy, or its turns wait for a CPU that other processes hold, it keeps to
SYNC_IN_PROCESS_CPU_SHARE of the CPU, and it runs at full speed otherwise."""

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time

import pytest

from sessions_app import services, sync
from sessions_app.models import ChatSession, SinkState
from sessions_app.sync import CpuPacer, RunQueueWaits, Sender, ThreadClocks
from tests.foundry_integration.conftest import PacerProbe, sync_pass, thread_messages

pytestmark = pytest.mark.django_db(transaction=True)


class Clocks:
    """Readings a test sets: wall time, the process's CPU and the sender's own CPU."""

    def __init__(self, *, waits_known: bool = True) -> None:
        self.wall = self.process = self.own = self.waited = 0.0
        self.waits_known = waits_known

    def pacer(self, share: float) -> CpuPacer:
        return CpuPacer(
            share,
            own_cpu=lambda: self.own,
            process_cpu=lambda: self.process,
            clock=lambda: self.wall,
            waited=lambda: self.waited if self.waits_known else None,
        )

    def spend(self, seconds: float, *, others: float, own: float = 0.0, waited=0.0) -> None:
        self.wall += seconds
        self.process += others + own
        self.own += own
        self.waited += waited


def delay_after(seconds: float, **spent) -> float:
    """A new pacer's delay (share 0.05) after one spell of `Clocks.spend`."""
    clocks = Clocks()
    pacer = clocks.pacer(0.05)
    clocks.spend(seconds, **spent)
    return pacer.delay()


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
        assert delay_after(1.0, others=0.55, own=0.2) == CpuPacer.MAX_DELAY_S

    def test_the_time_the_turns_wait_for_a_cpu_counts_as_load(self):
        # A process on a CPU that other busy processes share: it got 0.4 of a CPU, a tenth to
        # the sender, and its threads waited 0.5 s for the rest. By CPU time alone the process
        # looks 60% idle.
        assert delay_after(1.0, others=0.3, own=0.1, waited=0.5) == CpuPacer.MAX_DELAY_S
        # The same CPU times with nothing waiting: the sender may go on.
        assert delay_after(1.0, others=0.3, own=0.1) == 0

    def test_the_floor_is_the_share_of_the_cpu_the_process_gets(self):
        # One of five busy servers on a core: it got a fifth of a CPU and waited for the rest.
        # Its floor is a fifth of its share (0.01 of a CPU), so that five senders on the core
        # take 0.05 of it between them, not each.
        assert delay_after(1.0, others=0.19, own=0.01, waited=0.8) == 0  # at its floor
        # Twice its floor, 0.4 of the share: held back.
        assert delay_after(1.0, others=0.18, own=0.02, waited=0.8) == CpuPacer.MAX_DELAY_S
        # Alone on a core and saturated, the floor is the whole share.
        assert delay_after(1.0, others=0.95, own=0.05) == 0

    def test_a_process_that_got_no_cpu_does_not_break_the_pacer(self):
        assert delay_after(1.0, others=0.0, waited=1.0) == 0

    def test_where_the_waits_are_unknown_the_cpu_times_decide(self):
        clocks = Clocks(waits_known=False)
        pacer = clocks.pacer(0.05)
        clocks.spend(1.0, others=0.3, own=0.1, waited=0.5)
        assert pacer.delay() == 0

    def test_an_idle_process_does_not_hold_the_sender_back(self):
        assert delay_after(0.5, others=0.02, own=0.15) == 0

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


def last_cpu() -> int:
    return max(os.sched_getaffinity(0))


@contextlib.contextmanager
def pinned_to(cpu: int):
    """This thread, and the threads it starts meanwhile, on `cpu` only."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})  # Linux: 0 is the calling thread
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


HOG = """
import os, sys
parent = os.getppid()
print("spinning", flush=True)
while os.getppid() == parent:  # ends with the test process, however that ends
    pass
"""


@contextlib.contextmanager
def busy_process(cpu: int):
    """Another process that keeps `cpu` busy (a second server on the core, a batch job)."""
    hog = subprocess.Popen([sys.executable, "-c", HOG], stdout=subprocess.PIPE, text=True)
    try:
        os.sched_setaffinity(hog.pid, {cpu})
        assert hog.stdout.readline().strip() == "spinning"
        yield
    finally:
        hog.kill()
        hog.wait()
        hog.stdout.close()


needs_run_queue_waits = pytest.mark.skipif(
    not RunQueueWaits().available, reason="this kernel keeps no run-queue waits per thread"
)


@needs_run_queue_waits
class TestRunQueueWaits:
    def waited_beside_a_busy_process(self, *, exclude_worker: bool) -> float:
        """The reading's growth while a thread burns 0.2 s of CPU on a CPU that a busy
        process shares."""
        excluded: set[int] = set()
        waits = RunQueueWaits(lambda: excluded)
        cpu = last_cpu()

        burnt, read = threading.Event(), threading.Event()

        def worker():
            if exclude_worker:
                excluded.add(threading.get_native_id())
            burn_cpu(0.2)
            burnt.set()
            read.wait()  # read while it lives: an ended thread's file is gone

        before = waits.seconds()
        with busy_process(cpu):
            with pinned_to(cpu):
                thread = threading.Thread(target=worker)
                thread.start()
            burnt.wait()
        time.sleep(RunQueueWaits.MAX_AGE_S)
        after = waits.seconds()
        read.set()
        thread.join()
        return after - before

    def test_a_thread_that_shares_its_cpu_with_a_busy_process_waits(self):
        # The scheduler shares the CPU between the two: for its 0.2 s the thread waited about
        # as long.
        assert self.waited_beside_a_busy_process(exclude_worker=False) > 0.1

    def test_the_excluded_threads_do_not_count(self):
        assert self.waited_beside_a_busy_process(exclude_worker=True) < 0.05

    def test_a_reading_stands_for_a_while(self, monkeypatch):
        now = [0.0]
        waits = RunQueueWaits(clock=lambda: now[0])
        reads = []
        read = waits._read
        monkeypatch.setattr(waits, "_read", lambda: reads.append(now[0]) or read())
        waits.seconds()
        now[0] += RunQueueWaits.MAX_AGE_S / 2
        waits.seconds()
        assert reads == [0.0]
        now[0] += RunQueueWaits.MAX_AGE_S / 2
        waits.seconds()
        assert reads == [0.0, RunQueueWaits.MAX_AGE_S]

    def test_each_thread_file_stays_open_until_its_thread_ends(self):
        """Read in place, not opened for each reading (a server's 41 threads: 0.7 ms a
        reading, against 0.16 ms); an ended thread's file is closed, its last reading
        stands; close() closes the rest."""

        def open_files() -> int:
            """The process's open schedstat files (other threads may open other files)."""
            count = 0
            for fd in os.listdir("/proc/self/fd"):
                with contextlib.suppress(OSError):
                    count += os.readlink(f"/proc/self/fd/{fd}").endswith("/schedstat")
            return count

        now = [0.0]
        waits = RunQueueWaits(clock=lambda: now[0])

        def reading() -> float:
            now[0] += 1  # past MAX_AGE_S: a new reading
            return waits.seconds()

        before = open_files()
        reading()
        opened = open_files() - before
        assert opened >= 1
        reading()
        assert open_files() == before + opened

        ending, tids = threading.Event(), []
        thread = threading.Thread(
            target=lambda: tids.append(threading.get_native_id()) or ending.wait()
        )
        thread.start()
        with_thread = reading()
        assert open_files() == before + opened + 1
        ending.set()
        thread.join()
        deadline = time.monotonic() + 5
        while str(tids[0]) in os.listdir(RunQueueWaits.TASKS):  # the kernel's part of the exit
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert reading() >= with_thread
        assert open_files() == before + opened

        waits.close()
        assert open_files() == before

    def test_none_where_the_kernel_keeps_no_figures(self, tmp_path, monkeypatch):
        monkeypatch.setattr(RunQueueWaits, "TASKS", str(tmp_path))
        assert RunQueueWaits().seconds() is None


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


def serve(stop: threading.Event) -> None:
    """A server's request threads, busy until `stop`: each request ends in I/O, where the
    interpreter's lock goes to the thread that waits for it."""
    while not stop.is_set():
        burn_cpu(0.001)
        time.sleep(0)


def sender_beside_a_busy_server(user, emulator, *, cpu: int | None = None) -> tuple[float, float]:
    """Run the in-process sender over a backlog of 300 turns while a busy "server" thread runs
    for BUSY_S (given `cpu`: both on that CPU, beside a busy process); check that everything is
    delivered once the load has stopped, and return the process's CPU and the sender's over the
    busy time."""
    # A server has its SDKs loaded before it serves (SINK_WARM_UP): load them now.
    services.chat_turn(user=user, message="warm up", session_id="warm")
    sync_pass()
    for n in range(300):
        services.chat_turn(user=user, message=f"message {n}", session_id=f"s{n % 30}")
    wanted = 602
    stop_serving, stop_sender = threading.Event(), threading.Event()
    sender = None
    beside = busy_process(cpu) if cpu is not None else contextlib.nullcontext()
    try:
        with beside:
            with pinned_to(cpu) if cpu is not None else contextlib.nullcontext():
                server = threading.Thread(target=serve, args=(stop_serving,), name="busy-server")
                sender = threading.Thread(
                    target=sync._run_in_process, args=(stop_sender,), name="sync-sender"
                )
                server.start()
                sender.start()
            time.sleep(0.5)  # past the sender's start-up
            process, own = time.process_time(), thread_cpu("sync-sender")
            time.sleep(BUSY_S)
            process, own = time.process_time() - process, thread_cpu("sync-sender") - own
            busy_delivered = delivered()
            stop_serving.set()
            server.join()
        deadline = time.monotonic() + 30
        while delivered() < wanted:
            assert time.monotonic() < deadline, f"{delivered()} of {wanted} delivered"
            time.sleep(0.05)
    finally:
        stop_serving.set()
        stop_sender.set()
        sync.notify_sender()
        if sender is not None:
            sender.join(timeout=10)
    # Paced, not stopped: some of the backlog went out while the server was busy.
    assert 0 < busy_delivered < wanted
    session = ChatSession.objects.get(session_id="s7")
    assert len(thread_messages(emulator, session.foundry_thread_id)) == 20
    return process, own


@pytest.fixture
def paced(settings):
    settings.SYNC_IN_PROCESS_CPU_SHARE = 0.05
    settings.SYNC_POLL_INTERVAL_S = 0.05
    settings.SYNC_BATCH_SIZE = 2  # a turn's two messages, as a busy server's are


@pytest.mark.usefixtures("paced")
class TestInProcessSender:
    def test_a_busy_server_holds_its_sender_back_and_an_idle_one_does_not(
        self, user, foundry_agents
    ):
        process, own = sender_beside_a_busy_server(user, foundry_agents)
        if RunQueueWaits().available:
            # Busy whatever CPU the host leaves the process: 5% of a CPU, give or take the calls
            # that were already on their way when the pacer checked.
            assert own / BUSY_S < 0.08, (own, process)
            return
        if process / BUSY_S < 0.85:
            # Without the run-queue waits the pacer reads "busy" from CPU time only: a process
            # the host keeps well short of a CPU looks partly idle to it.
            pytest.skip(f"the process got only {process / BUSY_S:.2f} of a CPU: the host is busy")
        assert own / process < 0.12, (own, process)

    @needs_run_queue_waits
    def test_a_server_whose_cpu_another_busy_process_shares_holds_its_sender_back(
        self, user, foundry_agents
    ):
        # The process gets about half the CPU: by its CPU time it looks half idle, but its
        # turns wait for the CPU the other process holds.
        process, own = sender_beside_a_busy_server(user, foundry_agents, cpu=last_cpu())
        assert process / BUSY_S < 0.75, "the other process did not take its part of the CPU"
        # 5% of the CPU, as above; the sender would take about a quarter.
        assert own / BUSY_S < 0.08, (own, process)


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
