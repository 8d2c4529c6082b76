"""Against a real Daphne process on the embedded defaults (SQLite file, in-memory layer)."""

import sqlite3
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.live import ServerProcess, manage, server_env

pytestmark = pytest.mark.live_server_process

CLIENTS = 16
TURNS = 20


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("live")
    env = server_env(tmp_path)
    tokens = manage(env, "create_api_user", *(f"user{n}" for n in range(CLIENTS))).split()
    with ServerProcess(env, tmp_path / "server.log") as process:
        process.tokens = tokens
        process.db_path = tmp_path / "db.sqlite3"
        yield process


def run_client(server, token: str, session_id: str, turns: int) -> list[int]:
    """One closed-loop client; returns the HTTP status of every turn."""
    statuses = []
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Token {token}"}, timeout=60
    ) as client:
        for n in range(turns):
            response = client.post(
                "/api/v1/chat", json={"message": f"{session_id} #{n}", "session_id": session_id}
            )
            statuses.append(response.status_code)
    return statuses


def stored(db_path, session_id: str) -> list[tuple[int, str, str]]:
    with sqlite3.connect(db_path) as db:
        return db.execute(
            "SELECT m.seq, m.role, m.content FROM sessions_app_chatmessage m "
            "JOIN sessions_app_chatsession s ON s.id = m.session_id "
            "WHERE s.session_id = ? ORDER BY m.seq",
            (session_id,),
        ).fetchall()


def test_concurrent_clients_on_sqlite_lose_nothing(server):
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(
            pool.map(
                lambda n: run_client(server, server.tokens[n], f"load-{n}", TURNS), range(CLIENTS)
            )
        )
    assert [s for statuses in results for s in statuses] == [200] * (CLIENTS * TURNS)
    for n in range(CLIENTS):
        rows = stored(server.db_path, f"load-{n}")
        assert [seq for seq, _, _ in rows] == list(range(1, 2 * TURNS + 1))
        assert [c for _, role, c in rows if role == "user"] == [
            f"load-{n} #{t}" for t in range(TURNS)
        ]


def test_concurrent_turns_on_one_session_get_gapless_sequence_numbers(server):
    token = server.tokens[0]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda n: run_client(server, token, "shared", 10), range(8)))
    assert [s for statuses in results for s in statuses] == [200] * 80
    rows = stored(server.db_path, "shared")
    assert [seq for seq, _, _ in rows] == list(range(1, 161))
    user_messages = Counter(c for _, role, c in rows if role == "user")
    assert user_messages == {f"shared #{t}": 8 for t in range(10)}


def test_oversized_body_is_refused_before_it_is_read(server):
    response = httpx.post(
        f"{server.url}/api/v1/chat",
        content=b"x" * (2 * 1024 * 1024),
        headers={"Authorization": f"Token {server.tokens[0]}", "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["code"] == "too_large"
