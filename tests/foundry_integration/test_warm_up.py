"""A server process warms its active sinks up in the background, once, without calling them,
so that no user's turn waits for the SDK's imports and first client."""

import gc
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from rest_framework.test import APIClient

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


@pytest.fixture(autouse=True)
def unfrozen():
    """Every object back in the collector's reach (the start-up's freeze, or an earlier test's,
    may have taken the SDK's), before each test and after it: a warm-up freezes."""
    gc.unfreeze()
    yield
    gc.unfreeze()


def sdk_client_class(api: str) -> type:
    if api == "conversations":
        from azure.ai.projects.aio import AIProjectClient

        return AIProjectClient
    from azure.ai.agents.aio import AgentsClient

    return AgentsClient


def in_collectors_reach(obj) -> bool:
    """Whether the collections walk `obj` (a frozen object is in no generation they walk)."""
    return any(o is obj for o in gc.get_objects())


def test_the_warmed_up_sdk_is_taken_out_of_the_collectors_reach(
    foundry, settings, monkeypatch, unfrozen
):
    settings.SINK_WARM_UP = True
    monkeypatch.setattr(sinks, "_warm_up_thread", None)
    client_class = sdk_client_class(settings.FOUNDRY_THREAD_API)
    assert in_collectors_reach(client_class)
    run_warm_up()
    assert not in_collectors_reach(client_class)


def test_with_no_sink_to_warm_up_nothing_is_frozen(foundry, fresh_warm_up, settings, unfrozen):
    settings.FLAGS = flag_settings(False)
    forget_cached_flag()
    client_class = sdk_client_class(settings.FOUNDRY_THREAD_API)
    run_warm_up()
    assert in_collectors_reach(client_class)


@pytest.fixture
def slow_warm_up(monkeypatch, settings):
    """A warm-up that lasts until the test releases it."""
    settings.SINK_WARM_UP = True
    monkeypatch.setattr(sinks, "_warm_up_thread", None)
    monkeypatch.setattr(sinks, "_warm_up_waited_until", None)
    release = threading.Event()
    monkeypatch.setattr(FoundrySink, "warm_up", lambda self: release.wait(10))
    yield release
    release.set()


def test_the_first_health_check_waits_for_the_warm_up(foundry, slow_warm_up):
    sinks.warm_up_sinks()
    with ThreadPoolExecutor(1) as pool:
        health = pool.submit(APIClient().get, "/api/v1/health")
        time.sleep(0.3)
        assert not health.done()  # a readiness probe sends no traffic yet
        slow_warm_up.set()
        assert health.result(timeout=10).status_code == 200


def test_a_warm_up_that_hangs_does_not_hold_health_for_long(foundry, slow_warm_up, settings):
    settings.SINK_WARM_UP_WAIT_S = 0.2
    sinks.warm_up_sinks()
    assert APIClient().get("/api/v1/health").status_code == 200
    assert sinks._warm_up_thread.is_alive()  # answered without waiting for the end
    # Later checks do not wait again: a liveness probe is answered at once.
    settings.SINK_WARM_UP_WAIT_S = 60
    with ThreadPoolExecutor(1) as pool:
        health = pool.submit(APIClient().get, "/api/v1/health")
        assert health.result(timeout=10).status_code == 200
    assert sinks._warm_up_thread.is_alive()
