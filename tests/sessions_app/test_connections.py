"""Database connections come back: under the PostgreSQL pool, one kept by a finished WebSocket
call is one fewer for every other request of the process, until the pool runs dry."""

import asyncio
import threading

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from rest_framework.authtoken.models import Token

from tests.sessions_app.test_websocket import connect, send_turn

pytestmark = pytest.mark.django_db(transaction=True)


def checked_out() -> int:
    stats = connection.pool.get_stats()
    return stats["pool_size"] - stats["pool_available"]


async def socket_turn(token: str, n: int) -> None:
    ws = await connect(f"/api/v1/chat/ws/s{n}?token={token}")
    await send_turn(ws, "hi")
    await ws.disconnect()


def test_websocket_calls_give_their_connections_back():
    if connection.vendor != "postgresql" or connection.pool is None:
        pytest.skip("only PostgreSQL with DATABASE_POOL has a connection pool")
    user = get_user_model().objects.create_user(username="alice")
    token = Token.objects.create(user=user).key
    connection.close()  # ours goes back too, so only the sockets' count
    before = checked_out()
    # Each socket runs in a thread of its own, whose context has no connection yet, as a
    # server's event loop has none: more sockets than the pool holds would exhaust a leaking pool.
    for n in range(connection.pool.max_size + 2):
        thread = threading.Thread(target=asyncio.run, args=(socket_turn(token, n),))
        thread.start()
        thread.join(timeout=30)
        assert not thread.is_alive()
    assert checked_out() == before
