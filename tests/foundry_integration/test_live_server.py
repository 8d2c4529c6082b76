"""A real Daphne process with its in-process sender, talking to the emulator as to Azure."""

import time

import httpx
import pytest

from tests.live import ServerProcess, manage, server_env

pytestmark = pytest.mark.live_server_process


def foundry_env(tmp_path, emulator, flag: str) -> dict[str, str]:
    env = server_env(
        tmp_path,
        USE_FOUNDRY_THREADS=flag,
        AZURE_FOUNDRY_AGENT_ENDPOINT=emulator.base_url,
        AZURE_FOUNDRY_AGENT_PROJECT="live",
        AZURE_FOUNDRY_AGENT_KEY="emulator-key",
        FOUNDRY_FLAG_CACHE_S="0.5",
        SYNC_POLL_INTERVAL_S="0.2",
    )
    env["TOKEN"] = manage(env, "create_api_user", "alice").strip()
    return env


def chat(server, token, message, session_id):
    response = httpx.post(
        f"{server.url}/api/v1/chat",
        json={"message": message, "session_id": session_id},
        headers={"Authorization": f"Token {token}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response.json()


def wait_for(condition, timeout=15):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_flag_off_no_request_reaches_the_emulator(tmp_path, emulator):
    env = foundry_env(tmp_path, emulator, "false")
    with ServerProcess(env, tmp_path / "server.log") as server:
        for n in range(5):
            body = chat(server, env["TOKEN"], f"m{n}", "quiet")
            assert body["persistence"] == "local"
        time.sleep(1)  # give a background sender every chance to misbehave
    assert emulator.state.counters.total == 0


def test_flag_on_the_server_mirrors_turns_in_the_background(tmp_path, emulator):
    env = foundry_env(tmp_path, emulator, "true")
    with ServerProcess(env, tmp_path / "server.log") as server:
        first = chat(server, env["TOKEN"], "hello", "mirrored")
        assert first["persistence"] == "foundry"
        wait_for(lambda: emulator.state.store.counts() == (1, 2))
        detail = httpx.get(
            f"{server.url}/api/v1/sessions/mirrored",
            headers={"Authorization": f"Token {env['TOKEN']}"},
        ).json()
        thread_id = detail["thread_id"]
        assert thread_id.startswith("thread_")
        # Foundry slow: the chat answers without waiting for it.
        emulator.state.latency_ms = 2000
        second = chat(server, env["TOKEN"], "while slow", "mirrored")
        assert second["thread_id"] == thread_id
        wait_for(lambda: len(emulator.state.store.messages_anywhere(thread_id)) == 4)
        health = httpx.get(f"{server.url}/api/v1/health").json()
        assert health["sinks"]["foundry"] == {"active": True, "reason": ""}
    log = (tmp_path / "server.log").read_text()
    assert f"Created Foundry thread {thread_id} for session" in log
