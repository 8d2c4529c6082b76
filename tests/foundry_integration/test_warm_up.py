"""A server process warms its active sinks up in the background, once, without calling them,
so that no user's turn waits for the SDK's imports and first client."""

import pytest

from foundry_integration.sink import FoundrySink
from sessions_app import sinks
from tests.foundry_integration.conftest import flag_settings, forget_cached_flag

pytestmark = pytest.mark.django_db(transaction=True)


def test_warming_foundry_up_calls_nothing_remote(foundry, emulator):
    FoundrySink().warm_up()
    assert emulator.state.counters.total == 0


@pytest.fixture
def fresh_warm_up(monkeypatch, settings):
    settings.SINK_WARM_UP = True
    monkeypatch.setattr(sinks, "_warm_up_thread", None)
    warmed = []
    monkeypatch.setattr(FoundrySink, "warm_up", lambda self: warmed.append(self.name))
    return warmed


def run_warm_up() -> None:
    sinks.warm_up_sinks()
    sinks._warm_up_thread.join(timeout=10)


def test_active_sinks_are_warmed_up_once_per_process(foundry, fresh_warm_up):
    run_warm_up()
    first = sinks._warm_up_thread
    run_warm_up()
    assert sinks._warm_up_thread is first
    assert fresh_warm_up == ["foundry"]


def test_an_inactive_sink_is_left_cold(foundry, fresh_warm_up, settings):
    settings.FLAGS = flag_settings(False)
    forget_cached_flag()
    run_warm_up()
    assert fresh_warm_up == []


def test_switched_off_nothing_is_warmed_up(foundry, fresh_warm_up, settings):
    settings.SINK_WARM_UP = False
    sinks.warm_up_sinks()
    assert sinks._warm_up_thread is None
    assert fresh_warm_up == []
