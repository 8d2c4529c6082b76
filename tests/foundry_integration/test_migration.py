"""foundry_migrate_threads: classic threads to conversations, resumable, nothing lost or doubled."""

import threading
import time

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from foundry_integration.models import ThreadMigration
from sessions_app import services
from sessions_app.models import ChatSession, SinkState
from tests.foundry_integration.conftest import drain, thread_messages

pytestmark = pytest.mark.django_db(transaction=True)


def local_history(session: ChatSession) -> list[tuple[str, str]]:
    return list(session.messages.order_by("seq").values_list("role", "content"))


def make_sessions(user, count: int, long_every: int = 10) -> None:
    for n in range(count):
        # Every tenth session is long enough to take several copy calls.
        for t in range(15 if n % long_every == 0 else 2):
            services.chat_turn(user=user, message=f"s{n} t{t}", session_id=f"m{n}")


def test_dry_run_changes_nothing(user, foundry_agents, capsys):
    make_sessions(user, 3)
    drain()
    call_command("foundry_migrate_threads", "--to", "conversations", "--dry-run")
    out = capsys.readouterr().out
    assert "3 sessions have a classic thread to migrate" in out
    assert all(s.foundry_thread_id.startswith("thread_") for s in ChatSession.objects.all())
    assert foundry_agents.state.store.conversation_counts() == (0, 0)


def test_200_sessions_with_a_fault_halfway_finish_after_a_rerun(user, foundry_agents, settings):
    emulator = foundry_agents
    make_sessions(user, 200)
    drain()
    settings.FOUNDRY_THREAD_API = "conversations"

    def inject_fault_halfway():
        deadline = time.monotonic() + 60
        while emulator.state.store.conversation_counts()[0] < 100:
            if time.monotonic() > deadline:
                return
            time.sleep(0.005)
        emulator.state.fail_next = 6

    injector = threading.Thread(target=inject_fault_halfway)
    injector.start()
    with pytest.raises(CommandError, match="run again to resume"):
        call_command("foundry_migrate_threads", "--to", "conversations")
    injector.join()
    unfinished = ThreadMigration.objects.filter(finished_at__isnull=True)
    assert unfinished.exists()
    assert all(m.last_error for m in unfinished)

    # Turns go on meanwhile; they follow the session to its conversation.
    services.chat_turn(user=user, message="after the first run", session_id="m0")
    call_command("foundry_migrate_threads", "--to", "conversations")
    drain()
    for session in ChatSession.objects.all():
        assert session.foundry_thread_id.startswith("conv_"), session.session_key
        assert thread_messages(emulator, session.foundry_thread_id) == local_history(session)
    assert emulator.state.store.conversation_counts()[0] == 200
    state = SinkState.objects.get(session__session_id="m0")
    assert state.receipts.count() == state.delivered_seq == state.session.last_seq
    assert (
        not state.receipts.filter(remote_id__startswith="msg_")
        .exclude(
            remote_id__in=[i["id"] for i in emulator.state.store.items_anywhere(state.remote_id)]
        )
        .exists()
    )
    call_command("foundry_migrate_threads", "--to", "conversations")  # nothing left: a no-op


def test_admin_shows_the_api_of_each_thread(user, foundry_agents, client, make_user, settings):
    make_sessions(user, 2)
    drain()
    settings.FOUNDRY_THREAD_API = "conversations"
    services.chat_turn(user=user, message="new", session_id="fresh")
    drain()
    make_user("op", is_staff=True, is_superuser=True)
    client.login(username="op", password="pw-op")
    text = client.get("/admin/sessions_app/chatsession/").content.decode()
    assert text.count("foundry (agents): synced") == 2
    assert text.count("foundry (conversations): synced") == 1
