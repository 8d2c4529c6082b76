"""The chat WebSocket through the project's real ASGI application (auth middleware, routing,
consumer, channel layer), in process."""

import json

import pytest
import pytest_asyncio
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.test import Client
from rest_framework.authtoken.models import Token

from chatproject.asgi import application
from sessions_app.models import ChatMessage, ChatSession

# The consumer's database work runs in worker threads, so the test data must be committed.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@sync_to_async
def make_token(username: str) -> str:
    user = get_user_model().objects.create_user(username=username, password="pw")
    return Token.objects.create(user=user).key


@pytest_asyncio.fixture
async def token():
    return await make_token("alice")


async def connect(path: str, **kwargs) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, path, **kwargs)
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def send_turn(communicator, message: str, **fields) -> tuple[list[str], dict]:
    """Send a message; collect the chunk deltas until the reply frame."""
    await communicator.send_json_to({"type": "message", "message": message, **fields})
    deltas = []
    while True:
        frame = await communicator.receive_json_from(timeout=5)
        if frame["type"] == "chunk":
            deltas.append(frame["delta"])
        else:
            assert frame["type"] == "reply", frame
            return deltas, frame


async def test_chat_streams_chunks_then_the_reply(token):
    ws = await connect(f"/api/v1/chat/ws/s1?token={token}")
    deltas, reply = await send_turn(ws, "hello over a socket")
    assert len(deltas) > 1
    assert "".join(deltas) == reply["reply"] == 'Turn 1: you said "hello over a socket".'
    assert reply == {
        "type": "reply",
        "session_id": "s1",
        "agent_id": "echo",
        "project_id": "default",
        "reply": reply["reply"],
        "thread_id": None,
        "persistence": "local",
    }
    _, second = await send_turn(ws, "again")
    assert second["reply"] == 'Turn 2: you said "again". Earlier you said "hello over a socket".'
    await ws.disconnect()
    contents = await sync_to_async(list)(
        ChatMessage.objects.filter(session__session_id="s1").values_list("seq", "role")
    )
    assert contents == [(1, "user"), (2, "assistant"), (3, "user"), (4, "assistant")]


async def test_token_in_subprotocol_header(token):
    ws = WebsocketCommunicator(application, "/api/v1/chat/ws/s2", subprotocols=["token", token])
    connected, subprotocol = await ws.connect()
    assert connected
    assert subprotocol == "token"
    _, reply = await send_turn(ws, "hi")
    assert reply["session_id"] == "s2"
    await ws.disconnect()


async def test_session_cookie_auth():
    await make_token("carol")
    client = Client()
    await sync_to_async(client.login)(username="carol", password="pw")
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    ws = await connect("/api/v1/chat/ws/s3", headers=[(b"cookie", cookie)])
    _, reply = await send_turn(ws, "via cookie")
    assert reply["reply"].startswith("Turn 1")
    await ws.disconnect()
    # A page of another site may not ride the browser's cookie.
    foreign = WebsocketCommunicator(
        application,
        "/api/v1/chat/ws/s3",
        headers=[(b"cookie", cookie), (b"origin", b"https://evil.example")],
    )
    await foreign.connect()
    assert (await foreign.receive_output(timeout=5))["code"] == 4401


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/chat/ws/s1",
        "/api/v1/chat/ws/s1?token=wrong",
    ],
)
async def test_unauthenticated_socket_is_closed_with_4401(path):
    ws = WebsocketCommunicator(application, path)
    connected, _ = await ws.connect()
    assert connected
    assert await ws.receive_output(timeout=5) == {"type": "websocket.close", "code": 4401}


async def test_token_of_an_inactive_user_is_closed_with_4401(token):
    await sync_to_async(get_user_model().objects.filter(username="alice").update)(is_active=False)
    ws = WebsocketCommunicator(application, f"/api/v1/chat/ws/s1?token={token}")
    connected, _ = await ws.connect()
    assert connected
    assert await ws.receive_output(timeout=5) == {"type": "websocket.close", "code": 4401}


async def test_invalid_session_id_closes_with_4400(token):
    ws = await connect(f"/api/v1/chat/ws/bad%20id?token={token}")
    frame = await ws.receive_json_from(timeout=5)
    assert frame["code"] == "invalid_session_id"
    assert (await ws.receive_output(timeout=5))["code"] == 4400


@pytest.mark.parametrize(
    ("frame", "code", "field"),
    [
        ("{not json", "invalid_json", None),
        ("[1, 2]", "unknown_type", None),
        ('{"type": "typing"}', "unknown_type", None),
        ('{"type": "message"}', "invalid", "message"),
        ('{"type": "message", "message": "   "}', "invalid", "message"),
        ('{"type": "message", "message": 5}', "invalid", "message"),
        ('{"type": "message", "message": "' + "x" * 32_001 + '"}', "invalid", "message"),
        ('{"type": "message", "message": "hi", "agent_id": "nope"}', "invalid", "agent_id"),
        ('{"type": "message", "message": "hi", "project_id": "a b"}', "invalid", "project_id"),
    ],
)
async def test_bad_frames_get_error_frames_and_the_socket_stays_open(token, frame, code, field):
    ws = await connect(f"/api/v1/chat/ws/s4?token={token}")
    await ws.send_to(text_data=frame)
    error = await ws.receive_json_from(timeout=5)
    assert error["type"] == "error"
    assert error["code"] == code
    assert error["detail"]
    if field:
        assert field in error["fields"]
    _, reply = await send_turn(ws, "still here")
    assert reply["reply"] == 'Turn 1: you said "still here".'
    await ws.disconnect()


async def test_binary_frame_gets_an_error(token):
    ws = await connect(f"/api/v1/chat/ws/s5?token={token}")
    await ws.send_to(bytes_data=b"\x00\x01")
    assert (await ws.receive_json_from(timeout=5))["code"] == "invalid_frame"
    await ws.disconnect()


async def test_every_socket_of_the_session_sees_the_turn(token):
    first = await connect(f"/api/v1/chat/ws/shared?token={token}")
    second = await connect(f"/api/v1/chat/ws/shared?token={token}")
    elsewhere = await connect(f"/api/v1/chat/ws/other?token={token}")
    deltas, reply = await send_turn(first, "seen twice")
    seen_deltas, seen_reply = [], None
    while seen_reply is None:
        frame = await second.receive_json_from(timeout=5)
        if frame["type"] == "chunk":
            seen_deltas.append(frame["delta"])
        else:
            seen_reply = frame
    assert seen_deltas == deltas
    assert seen_reply == reply
    assert await elsewhere.receive_nothing(timeout=0.2)
    for ws in (first, second, elsewhere):
        await ws.disconnect()


async def test_another_users_socket_sees_nothing(token):
    bobs_token = await make_token("bob")
    mine = await connect(f"/api/v1/chat/ws/same-id?token={token}")
    bobs = await connect(f"/api/v1/chat/ws/same-id?token={bobs_token}")
    await send_turn(mine, "private")
    assert await bobs.receive_nothing(timeout=0.2)
    _, bobs_reply = await send_turn(bobs, "bob here")
    assert bobs_reply["reply"] == 'Turn 1: you said "bob here".'
    assert await sync_to_async(ChatSession.objects.filter(session_id="same-id").count)() == 2
    await mine.disconnect()
    await bobs.disconnect()


async def test_turns_sent_back_to_back_run_in_order(token):
    ws = await connect(f"/api/v1/chat/ws/burst?token={token}")
    for n in range(1, 6):
        await ws.send_to(text_data=json.dumps({"type": "message", "message": f"m{n}"}))
    replies = []
    while len(replies) < 5:
        frame = await ws.receive_json_from(timeout=5)
        if frame["type"] == "reply":
            replies.append(frame["reply"])
    assert [r.split(":")[0] for r in replies] == [f"Turn {n}" for n in range(1, 6)]
    assert all(f'"m{n}"' in r for n, r in zip(range(1, 6), replies, strict=True))
    await ws.disconnect()
