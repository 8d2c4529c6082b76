"""What only several processes sharing PostgreSQL and Redis can show: two Daphne servers behind
one database and one channel layer, and several sync workers over one backlog."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
import redis
from websockets.asyncio.client import connect

from tests.live import ROOT, ServerProcess, current_database_url, manage, server_env
from tests.services import REDIS_URL, fresh_postgres_database, unreachable

pytestmark = [pytest.mark.services, pytest.mark.live_server_process]


@pytest.fixture(scope="module")
def services_available():
    problem = unreachable()
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs PostgreSQL and Redis: {problem}")
        pytest.skip(f"needs PostgreSQL and Redis ({problem})")
    redis.Redis.from_url(REDIS_URL).flushdb()


@pytest.fixture
def two_servers(services_available, tmp_path, emulator):
    """Two Daphne processes on two ports, one PostgreSQL database, one Redis."""
    with fresh_postgres_database() as database_url:
        env = server_env(
            tmp_path,
            DATABASE_URL=database_url,
            REDIS_URL=REDIS_URL,
            USE_FOUNDRY_THREADS="true",
            AZURE_FOUNDRY_AGENT_ENDPOINT=emulator.base_url,
            AZURE_FOUNDRY_AGENT_PROJECT="scale",
            AZURE_FOUNDRY_AGENT_KEY="emulator-key",
            SYNC_POLL_INTERVAL_S="0.2",
        )
        token = manage(env, "create_api_user", "alice").strip()
        with (
            ServerProcess(env, tmp_path / "a.log") as a,
            ServerProcess(env, tmp_path / "b.log") as b,
        ):
            yield a, b, token


def ws_url(server: ServerProcess, session_id: str) -> str:
    return server.url.replace("http", "ws", 1) + f"/api/v1/chat/ws/{session_id}"


async def frames_until_reply(ws) -> list[dict]:
    frames = []
    while not frames or frames[-1]["type"] != "reply":
        frames.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
    return frames


def test_a_turn_sent_through_one_server_reaches_sockets_on_the_other(two_servers):
    a, b, token = two_servers

    async def scenario():
        async with (
            connect(ws_url(a, "shared"), subprotocols=["token", token]) as on_a,
            connect(ws_url(b, "shared"), subprotocols=["token", token]) as on_b,
        ):
            await on_a.send(json.dumps({"type": "message", "message": "across servers"}))
            return await frames_until_reply(on_a), await frames_until_reply(on_b)

    sent, seen = asyncio.run(scenario())
    assert seen == sent
    assert seen[-1]["reply"] == 'Turn 1: you said "across servers".'
    assert "".join(f["delta"] for f in seen if f["type"] == "chunk") == seen[-1]["reply"]


def test_a_session_started_on_one_server_continues_on_the_other(two_servers, emulator):
    a, b, token = two_servers
    headers = {"Authorization": f"Token {token}"}

    def chat(server, message):
        response = httpx.post(
            f"{server.url}/api/v1/chat",
            json={"message": message, "session_id": "roaming"},
            headers=headers,
            timeout=10,
        )
        assert response.status_code == 200, response.text
        return response.json()

    chat(a, "first, on a")
    deadline = time.monotonic() + 15
    while not (
        thread_id := httpx.get(f"{a.url}/api/v1/sessions/roaming", headers=headers).json()[
            "thread_id"
        ]
    ):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    second = chat(b, "then on b")
    assert second["reply"] == 'Turn 2: you said "then on b". Earlier you said "first, on a".'
    assert second["thread_id"] == thread_id
    while len(emulator.state.store.messages_anywhere(thread_id)) < 4:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(0.5)  # both servers' senders had time to send anything twice
    contents = [
        m["content"][0]["text"]["value"] for m in emulator.state.store.messages_anywhere(thread_id)
    ]
    assert contents[0::2] == ["first, on a", "then on b"]
    assert len(contents) == 4
    assert emulator.state.store.counts()[0] == 1


@pytest.mark.django_db(transaction=True)
def test_three_workers_deliver_a_backlog_of_1000_turns_exactly_once(
    services_available, emulator, settings, user
):
    from django.db import connection

    from sessions_app import services
    from sessions_app.models import ChatSession, SinkState
    from tests.foundry_integration.conftest import PROJECT, flag_settings

    if connection.vendor != "postgresql":
        pytest.skip("runs in the PostgreSQL pass (DATABASE_URL=postgres://...)")
    from foundry_integration.flag import forget_cached_flag

    settings.FLAGS = flag_settings(True)
    settings.AZURE_FOUNDRY_AGENT_ENDPOINT = emulator.base_url
    settings.AZURE_FOUNDRY_AGENT_PROJECT = PROJECT
    settings.AZURE_FOUNDRY_AGENT_KEY = "emulator-key"
    forget_cached_flag()
    for n in range(1000):
        services.chat_turn(user=user, message=f"turn {n}", session_id=f"backlog-{n % 50}")
    forget_cached_flag()

    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(
        DATABASE_URL=current_database_url(),
        USE_FOUNDRY_THREADS="true",
        AZURE_FOUNDRY_AGENT_ENDPOINT=emulator.base_url,
        AZURE_FOUNDRY_AGENT_PROJECT=PROJECT,
        AZURE_FOUNDRY_AGENT_KEY="emulator-key",
        SYNC_CLAIM_LIMIT="4",
        SYNC_POLL_INTERVAL_S="0.2",
    )
    workers = [
        subprocess.Popen(
            [sys.executable, "manage.py", "foundry_sync", "--name", f"w{n}"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(3)
    ]
    try:
        deadline = time.monotonic() + 120
        while emulator.state.store.counts()[1] < 2000:
            assert time.monotonic() < deadline, emulator.state.store.counts()
            assert all(w.poll() is None for w in workers)
            time.sleep(0.2)
        time.sleep(1)  # a double send would show now
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        logs = [worker.communicate(timeout=20)[1] for worker in workers]
    assert emulator.state.store.counts() == (50, 2000)
    for session in ChatSession.objects.all():
        contents = [
            m["content"][0]["text"]["value"]
            for m in emulator.state.store.messages_anywhere(session.foundry_thread_id)
        ]
        numbers = [int(c.split()[1]) for c in contents[0::2]]
        assert numbers == sorted(numbers)
        assert len(contents) == 40
    assert all(s.delivered_seq == 40 for s in SinkState.objects.all())
    # The work was shared: every worker created threads.
    assert all("Created Foundry thread" in log for log in logs), logs
