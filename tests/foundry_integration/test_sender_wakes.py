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


def test_a_sink_found_off_is_looked_at_again_after_the_poll_interval(
    user, foundry_agents, settings
):
    settings.SYNC_POLL_INTERVAL_S = 0.5
    settings.FLAGS = flag_settings(False)
    forget_cached_flag()
    sender = Sender(name="parks")
    foundry = sink_get("foundry")
    assert asyncio.run(sender.run_sink_once(foundry)) == 0
    settings.FLAGS = flag_settings(True)
    forget_cached_flag()
    services.chat_turn(user=user, message="hello", session_id="parked")
    assert asyncio.run(sender.run_sink_once(foundry)) == 0  # still parked
    time.sleep(0.55)
    assert asyncio.run(sender.run_once_and_close()) == 1
    assert SinkState.objects.get().delivered_seq == 2


def test_wakes_start_no_pass_while_every_sink_is_off(foundry_agents, settings):
    settings.SYNC_POLL_INTERVAL_S = 0.5
    settings.SYNC_WAKE_COALESCE_S = 0.01
    settings.FLAGS = flag_settings(False)
    forget_cached_flag()
    sender = CountingSender(name="wakes")
    stop, wake = threading.Event(), threading.Event()
    thread = threading.Thread(target=lambda: asyncio.run(sender.run(stop, wake)))
    thread.start()
    try:
        end = time.monotonic() + 1.0
        while time.monotonic() < end:  # a busy server's turns: a wake every 10 ms
            wake.set()
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    # One pass at the start and one per poll interval: 3 in the second, give or take one.
    # Woken by each turn it would be some 50.
    assert sender.passes and max(sender.passes.values()) <= 4, sender.passes
