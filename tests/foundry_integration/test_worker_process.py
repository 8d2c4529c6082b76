"""`manage.py foundry_sync` as a real worker process, killed in the middle of a batch."""

import os
import signal
import subprocess
import sys
import time

import pytest
from django.utils import timezone

from sessions_app import services
from sessions_app.models import ChatSession, SinkState
from tests.foundry_integration.conftest import PROJECT, drain, thread_messages
from tests.live import ROOT, current_database_url

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.live_server_process]


def worker_env(emulator, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(
        {
            "DATABASE_URL": current_database_url(),
            "USE_FOUNDRY_THREADS": "true",
            "AZURE_FOUNDRY_AGENT_ENDPOINT": emulator.base_url,
            "AZURE_FOUNDRY_AGENT_PROJECT": PROJECT,
            "AZURE_FOUNDRY_AGENT_KEY": "emulator-key",
            "SYNC_BATCH_SIZE": "50",
            **extra,
        }
    )
    return env


def test_worker_killed_mid_batch_delivers_everything_once_after_restart(user, foundry, caplog):
    replies = [
        services.chat_turn(user=user, message=f"message {n}", session_id="killed").reply
        for n in range(20)
    ]
    # Every message takes 100 ms on the emulator: the 40-message batch is cut short by the kill.
    foundry.state.latency_ms = 100
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "foundry_sync", "--name", "doomed"],
        cwd=ROOT,
        env=worker_env(foundry, SYNC_LEASE_S="2"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        session = None
        while time.monotonic() < deadline:
            session = ChatSession.objects.get(session_id="killed")
            landed = thread_messages(foundry, session.foundry_thread_id or "")
            if len(landed) >= 5:
                break
            time.sleep(0.05)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        if worker.poll() is None:
            worker.kill()
    state = SinkState.objects.get()
    landed_at_kill = len(thread_messages(foundry, session.foundry_thread_id))
    assert 5 <= landed_at_kill < 40
    assert state.claimed_by == "doomed"
    assert state.delivered_seq < 40

    foundry.state.latency_ms = 0
    # The dead worker's claim expires (SYNC_LEASE_S), then another worker finishes the work.
    while SinkState.objects.get().claimed_until > timezone.now():
        time.sleep(0.1)
    drain()
    assert f"Reconciled Foundry thread {session.foundry_thread_id}" in caplog.text
    expected = []
    for n, reply in enumerate(replies):
        expected += [("user", f"message {n}"), ("assistant", reply)]
    assert thread_messages(foundry, session.foundry_thread_id) == expected
