"""A sender passes over a sink that could do nothing (off, or its breaker open) only now and
then, not on every turn's wake: in a server, each pass a wake starts costs the turns thread
switches, however little the pass does."""

import asyncio
import threading
import time

import pytest

from foundry_integration.flag import forget_cached_flag
from sessions_app import services
from sessions_app.models import SinkState
from sessions_app.sinks import sink_get
from sessions_app.sync import Sender
from tests.foundry_integration.conftest import flag_settings

pytestmark = pytest.mark.django_db(transaction=True)


class CountingSender(Sender):
    """A sender that counts its passes over each sink that reach the database."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.passes: dict[str, int] = {}

    def _claim(self, sink):
        self.passes[sink.name] = self.passes.get(sink.name, 0) + 1
        return super()._claim(sink)


def wakes_taken_up(wake: threading.Event, *, seconds: float) -> int:
    """Wake the sender every 10 ms for `seconds`, as a busy server's turns do; returns how
    many wakes it took up (cleared)."""
    taken = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not wake.is_set():
            taken += 1
            wake.set()
        time.sleep(0.01)
    return taken


def test_a_sink_found_off_is_passed_over_until_the_poll_interval_ends(
    user, foundry_agents, settings
):
    settings.SYNC_POLL_INTERVAL_S = 30
    settings.FLAGS = flag_settings(False)
    forget_cached_flag()
    sender = Sender(name="parks")
    foundry = sink_get("foundry")
    assert asyncio.run(sender.run_sink_once(foundry)) == 0
    settings.FLAGS = flag_settings(True)
    forget_cached_flag()
    services.chat_turn(user=user, message="hello", session_id="parked")
    assert asyncio.run(sender.run_sink_once(foundry)) == 0  # parked: not even looked at
    assert asyncio.run(Sender(name="fresh").run_once_and_close()) == 1


def test_while_every_sink_is_off_wakes_wait_and_the_flag_is_seen_soon(
    user, foundry_agents, settings
):
    settings.SYNC_POLL_INTERVAL_S = 0.3
    settings.SYNC_WAKE_COALESCE_S = 0.01
    settings.FLAGS = flag_settings(False)
    forget_cached_flag()
    sender = CountingSender(name="wakes")
    stop, wake = threading.Event(), threading.Event()
    thread = threading.Thread(target=lambda: asyncio.run(sender.run(stop, wake)))
    thread.start()
    try:
        # A busy server's turns: a wake every 10 ms. The sender takes one up (clears it) only
        # when a sink may be passed over again: about once per poll interval, not per wake.
        taken = wakes_taken_up(wake, seconds=1.2)
        passes = dict(sender.passes)
        settings.FLAGS = flag_settings(True)
        forget_cached_flag()
        services.chat_turn(user=user, message="hello", session_id="woken")
        wake.set()
        deadline = time.monotonic() + 10
        while not SinkState.objects.filter(delivered_seq=2).exists():
            assert time.monotonic() < deadline, "the flag turned on was not seen"
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    # 1.2 s at 0.3 s: about 5 passes over each sink, and a wake taken up about twice per
    # interval (each sink is parked from its own pass). Taken up per turn: 60 or more.
    assert taken <= 16, taken
    assert passes and max(passes.values()) <= 8, passes


class HeldSender(Sender):
    """A sender whose first pass over Foundry lasts until the test lets it end."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.in_pass, self.end_pass = threading.Event(), threading.Event()

    async def run_sink_once(self, sink) -> int:
        if sink.name == "foundry" and not self.end_pass.is_set():
            self.in_pass.set()
            while not self.end_pass.is_set():
                await asyncio.sleep(0.01)
        return 0


def run_in_thread(sender: Sender) -> tuple[threading.Event, threading.Event, threading.Thread]:
    """`sender.run` in a thread (a daemon: should it hang, the test run still ends); returns
    its stop and wake events, and the thread."""
    stop, wake = threading.Event(), threading.Event()
    thread = threading.Thread(target=lambda: asyncio.run(sender.run(stop, wake)), daemon=True)
    thread.start()
    return stop, wake, thread


def test_a_stop_during_a_pass_ends_the_sender(foundry_agents, settings):
    settings.SYNC_WAKE_COALESCE_S = 0.01
    sender = HeldSender(name="held")
    stop, wake, thread = run_in_thread(sender)
    assert sender.in_pass.wait(10)
    stop.set()
    wake.set()
    time.sleep(0.3)  # the sender's tick has ended meanwhile, its last wake-up given
    sender.end_pass.set()
    thread.join(10)
    assert not thread.is_alive(), "the sender kept waiting after its stop"


class HeldPassSender(HeldSender):
    """A HeldSender that counts its passes over Foundry and passes over its other sinks as
    usual."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.foundry_passes = 0

    async def run_sink_once(self, sink) -> int:
        if sink.name != "foundry":
            return await Sender.run_sink_once(self, sink)
        self.foundry_passes += 1
        return await super().run_sink_once(sink)


def start_held(
    settings,
) -> tuple[HeldPassSender, threading.Event, threading.Event, threading.Thread]:
    """A HeldPassSender running (run_in_thread), in its first pass over Foundry, while Zep
    (not configured: off) is parked."""
    settings.SYNC_POLL_INTERVAL_S = 30
    settings.SYNC_WAKE_COALESCE_S = 0.01
    sender = HeldPassSender(name="held-pass")
    stop, wake, thread = run_in_thread(sender)
    assert sender.in_pass.wait(10)
    deadline = time.monotonic() + 10
    while sender._parked_for([sink_get("zep")]) == 0:
        assert time.monotonic() < deadline, "Zep was not parked"
        time.sleep(0.01)
    return sender, stop, wake, thread


def test_while_the_sinks_are_in_a_pass_or_parked_no_wake_is_taken_up(foundry_agents, settings):
    sender, stop, wake, thread = start_held(settings)
    try:
        # A busy server's turns wake the sender every 10 ms for a second. A sender held back
        # by its pacer stays in a pass for seconds: a pass that ends goes on to the next by
        # itself, and the parked Zep could do nothing. Taken up per turn: about 90.
        taken = wakes_taken_up(wake, seconds=1)
        assert taken <= 1, taken
        # Once the pass ends with nothing done, the loop waits for a wake, and the wake that
        # is pending starts the next pass at once, not when Zep's parking (30 s) ends.
        sender.end_pass.set()
        deadline = time.monotonic() + 5
        while sender.foundry_passes < 2:
            assert time.monotonic() < deadline, "the pending wake started no pass"
            time.sleep(0.01)
    finally:
        sender.end_pass.set()
        stop.set()
        wake.set()
        thread.join(10)
    assert not thread.is_alive()


def test_a_stop_during_a_pass_ends_the_sender_while_another_sink_is_parked(
    foundry_agents, settings
):
    sender, stop, wake, thread = start_held(settings)
    stop.set()
    wake.set()  # as the server's stop does
    time.sleep(0.1)
    sender.end_pass.set()  # the pass ends after the stop: no wake comes any more
    thread.join(10)
    assert not thread.is_alive(), "the parked sink's loop kept waiting after the stop"


def test_a_sender_with_no_sinks_stops(settings):
    settings.CHAT_SINKS = []
    settings.SYNC_POLL_INTERVAL_S = 30
    stop, wake, thread = run_in_thread(Sender(name="no-sinks"))
    time.sleep(0.1)
    stop.set()
    wake.set()
    thread.join(10)
    assert not thread.is_alive(), "the sender with no sinks kept waiting after its stop"
