"""Foundry slow does not delay Zep, and Zep slow does not delay Foundry: one sender, one loop
per sink."""

import asyncio
import threading
import time

import pytest

from sessions_app import services
from sessions_app.models import SinkState
from sessions_app.sync import Sender
from tests.foundry_integration.conftest import configure_foundry, thread_messages
from tests.zep_integration.conftest import zep_messages

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def both(settings, emulator, zep):
    yield from configure_foundry(settings, emulator, "agents")


@pytest.mark.parametrize("zep", ["cloud"], indirect=True)
@pytest.mark.parametrize("slow", ["foundry", "zep"])
def test_a_slow_sink_does_not_hold_up_the_other(user, both, emulator, zep, settings, slow):
    settings.FOUNDRY_READ_TIMEOUT_S = 30
    settings.ZEP_TIMEOUT_S = 30
    slow_emulator, fast = (emulator, "zep") if slow == "foundry" else (zep, "foundry")
    slow_emulator.state.latency_ms = 5000
    stop = threading.Event()
    sender = threading.Thread(target=lambda: asyncio.run(Sender(name="both").run(stop)))
    sender.start()
    try:
        for n in range(3):
            services.chat_turn(user=user, message=f"m{n}", session_id="two-sinks")
        deadline = time.monotonic() + 20
        while True:
            state = SinkState.objects.filter(sink=fast, delivered_seq=6).first()
            if state:
                break
            assert time.monotonic() < deadline, "the fast sink was held up"
            time.sleep(0.05)
        # The slow sink has not finished even its first call yet.
        slow_state = SinkState.objects.get(sink=slow)
        assert slow_state.delivered_seq == 0
        assert slow_state.remote_id is None
        remote = state.remote_id
        stored = zep_messages(zep, remote) if fast == "zep" else thread_messages(emulator, remote)
        assert len(stored) == 6
    finally:
        slow_emulator.state.latency_ms = 0
        stop.set()
        sender.join(timeout=30)
    assert not sender.is_alive()


def wanted() -> dict[str, int]:
    """Each sink's pending messages: through which one it wants the session."""
    states = SinkState.objects.select_related("session")
    return {state.sink: state.wanted_through for state in states if state.pending_count}


@pytest.mark.parametrize("zep", ["cloud"], indirect=True)
def test_a_sink_switched_on_mid_session_gets_the_whole_session(user, both, emulator, zep, settings):
    from foundry_integration.flag import forget_cached_flag
    from tests.foundry_integration.conftest import drain, flag_settings

    settings.FLAGS = flag_settings(False)
    forget_cached_flag()
    for n in range(2):
        services.chat_turn(user=user, message=f"m{n}", session_id="switched")
    assert wanted() == {"zep": 4}
    settings.FLAGS = flag_settings(True)
    forget_cached_flag()
    services.chat_turn(user=user, message="m2", session_id="switched")
    assert wanted() == {"zep": 6, "foundry": 6}
    drain()
    foundry = SinkState.objects.get(sink="foundry")
    assert [content for _, content in thread_messages(emulator, foundry.remote_id)][::2] == [
        "m0",
        "m1",
        "m2",
    ]


@pytest.mark.parametrize("zep", ["cloud"], indirect=True)
def test_an_imported_foundry_thread_reaches_zep_too(user, both, emulator, zep):
    from django.core.management import call_command

    from tests.foundry_integration.conftest import drain
    from tests.foundry_integration.test_history_import import history, remote_thread

    thread_id = remote_thread(60)  # longer than one page: the sender imports it
    call_command("foundry_import_thread", "alice", "imported", thread_id)
    services.chat_turn(user=user, message="new", session_id="imported")
    drain()
    # Zep had nothing of the session yet: it gets the imported history and the new turn.
    rows = [(role, content) for _, role, content in history("imported")]
    assert len(rows) == 122
    assert zep_messages(zep, SinkState.objects.get(sink="zep").remote_id) == rows
    assert thread_messages(emulator, thread_id) == rows


@pytest.mark.parametrize("zep", ["cloud"], indirect=True)
def test_what_zep_holds_keeps_its_place_when_a_thread_is_imported(user, both, emulator, zep):
    from django.core.management import call_command

    from tests.foundry_integration.conftest import drain
    from tests.foundry_integration.test_history_import import history, remote_thread

    services.chat_turn(user=user, message="before", session_id="mixed")
    drain()
    zep_thread = SinkState.objects.get(sink="zep").remote_id
    thread_id = remote_thread(60)
    call_command("foundry_import_thread", "alice", "mixed", thread_id)
    after = services.chat_turn(user=user, message="after", session_id="mixed")
    drain()
    rows = history("mixed")
    assert [seq for seq, _, _ in rows] == list(range(1, 125))
    # Zep keeps what it had and gets the new turn once; Foundry's history is not resent there.
    assert [content for _, content in zep_messages(zep, zep_thread)][::2] == ["before", "after"]
    assert zep_messages(zep, zep_thread)[-1] == ("assistant", after.reply)
    zep_state = SinkState.objects.get(sink="zep")
    assert zep_state.delivered_seq == zep_state.wanted_seq == 124
    assert sorted(zep_state.receipts.values_list("seq", flat=True)) == [121, 122, 123, 124]
