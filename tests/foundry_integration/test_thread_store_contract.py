"""The contract every Foundry thread store adapter passes, run against the emulator with the real
SDK. Parametrised over FOUNDRY_THREAD_API values: a new adapter is one more parameter."""

import socket
import types

import pytest
import pytest_asyncio
from aiohttp import web

from foundry_integration.config import FoundryConfig
from foundry_integration.sink import thread_store
from sessions_app.sinks import (
    AppendInterrupted,
    OutgoingMessage,
    RecentMessages,
    RemoteNotFound,
    RemoteThrottled,
    SinkError,
)

pytestmark = pytest.mark.asyncio

APIS = ["agents", "conversations"]
METADATA = {"user_id": "1", "session_id": "s", "created_at": "2026-01-01T00:00:00+00:00"}


def store_config(endpoint: str, api: str) -> FoundryConfig:
    return FoundryConfig(
        endpoint=endpoint,
        project="contract",
        key="emulator-key",
        thread_api=api,
        connect_timeout=2,
        read_timeout=2,
        sdk_retries=0,
        proxy_from_env=False,
    )


@pytest_asyncio.fixture(params=APIS)
async def store(request, emulator):
    store = thread_store(store_config(emulator.base_url, request.param))
    assert store.api == request.param
    yield store
    await store.aclose()


def outgoing(count: int, start: int = 1) -> list[OutgoingMessage]:
    return [
        OutgoingMessage(seq, "user" if seq % 2 else "assistant", f"text {seq}", "echo")
        for seq in range(start, start + count)
    ]


async def test_create_append_load_in_order(store):
    thread_id = await store.create_thread(metadata=METADATA)
    assert await store.load_messages(thread_id=thread_id) == []
    ids = await store.append_messages(thread_id=thread_id, messages=outgoing(5))
    ids += await store.append_messages(thread_id=thread_id, messages=outgoing(3, start=6))
    assert len(set(ids)) == 8
    loaded = await store.load_messages(thread_id=thread_id)
    assert [m.remote_id for m in loaded] == ids
    assert [(m.role, m.content) for m in loaded] == [
        ("user" if seq % 2 else "assistant", f"text {seq}") for seq in range(1, 9)
    ]


async def test_long_threads_load_whole(store):
    thread_id = await store.create_thread(metadata=METADATA)
    await store.append_messages(thread_id=thread_id, messages=outgoing(250))
    loaded = await store.load_messages(thread_id=thread_id)
    assert [m.content for m in loaded] == [f"text {seq}" for seq in range(1, 251)]


async def test_recent_messages_read_from_the_newest_end(store, emulator):
    thread_id = await store.create_thread(metadata=METADATA)
    await store.append_messages(thread_id=thread_id, messages=outgoing(250))
    reads = emulator.state.counters.total

    recent = await store.load_recent_messages(thread_id=thread_id, at_least=50)
    # One page of the newest messages, oldest first; older ones are left.
    assert emulator.state.counters.total == reads + 1
    assert [m.content for m in recent.messages] == [f"text {seq}" for seq in range(151, 251)]
    assert not recent.complete

    recent = await store.load_recent_messages(thread_id=thread_id, at_least=120)
    assert [m.content for m in recent.messages] == [f"text {seq}" for seq in range(51, 251)]
    assert not recent.complete


async def test_recent_messages_of_a_short_thread_are_all_of_it(store, emulator):
    thread_id = await store.create_thread(metadata=METADATA)
    assert await store.load_recent_messages(thread_id=thread_id, at_least=50) == RecentMessages(
        [], complete=True
    )
    ids = await store.append_messages(thread_id=thread_id, messages=outgoing(30))
    reads = emulator.state.counters.total
    recent = await store.load_recent_messages(thread_id=thread_id, at_least=50)
    assert emulator.state.counters.total == reads + 1
    assert recent.complete
    assert recent.messages == await store.load_messages(thread_id=thread_id)
    assert [m.remote_id for m in recent.messages] == ids


async def test_content_round_trips(store):
    thread_id = await store.create_thread(metadata=METADATA)
    texts = ["x" * 32_000, "ünïcödé ✓ 漢字 🙂", 'line\nbreaks\tand "quotes"']
    messages = [OutgoingMessage(n, "user", t, "echo") for n, t in enumerate(texts, start=1)]
    await store.append_messages(thread_id=thread_id, messages=messages)
    assert [m.content for m in await store.load_messages(thread_id=thread_id)] == texts


async def test_system_messages_keep_their_role(store):
    thread_id = await store.create_thread(metadata=METADATA)
    await store.append_messages(
        thread_id=thread_id, messages=[OutgoingMessage(1, "system", "be brief", "echo")]
    )
    assert [m.role for m in await store.load_messages(thread_id=thread_id)] == ["system"]


async def test_missing_thread_is_remote_not_found(store):
    with pytest.raises(RemoteNotFound):
        await store.load_messages(thread_id="thread_missing")
    with pytest.raises(RemoteNotFound):
        await store.load_recent_messages(thread_id="thread_missing", at_least=1)
    with pytest.raises(RemoteNotFound):
        await store.append_messages(thread_id="thread_missing", messages=outgoing(1))


async def test_delete_is_idempotent(store):
    thread_id = await store.create_thread(metadata=METADATA)
    await store.delete_thread(thread_id=thread_id)
    with pytest.raises(RemoteNotFound):
        await store.load_messages(thread_id=thread_id)
    await store.delete_thread(thread_id=thread_id)


async def test_throttling_carries_retry_after(store, emulator):
    emulator.state.retry_after_s = 7
    emulator.state.throttle_next = 1
    with pytest.raises(RemoteThrottled) as caught:
        await store.create_thread(metadata=METADATA)
    assert caught.value.retry_after == 7


@pytest.mark.parametrize("knob", ["fail_next", "drop_next"])
async def test_failures_are_sink_errors_and_store_nothing(store, emulator, knob):
    thread_id = await store.create_thread(metadata=METADATA)
    setattr(emulator.state, knob, 1)
    with pytest.raises(SinkError) as caught:
        await store.append_messages(thread_id=thread_id, messages=outgoing(1))
    assert not isinstance(caught.value, AppendInterrupted)
    assert await store.load_messages(thread_id=thread_id) == []


async def test_an_interrupted_batch_reports_the_stored_prefix(store, emulator):
    thread_id = await store.create_thread(metadata=METADATA)
    # Seed 2 draws 0.96, 0.95, 0.06...: the third request of the batch fails. An adapter that
    # sends a batch in one call stores all or nothing; either way the stored part is a prefix.
    emulator.state.configure_faults(error_rate=0.5, seed=2)
    try:
        await store.append_messages(thread_id=thread_id, messages=outgoing(10))
        delivered = 10
    except AppendInterrupted as exc:
        delivered = len(exc.delivered_ids)
    except SinkError:
        delivered = 0
    emulator.state.error_rate = 0
    loaded = await store.load_messages(thread_id=thread_id)
    assert [m.content for m in loaded] == [f"text {seq}" for seq in range(1, delivered + 1)]


async def test_timeouts_are_sink_errors(store, emulator):
    emulator.state.latency_ms = 3000
    with pytest.raises(SinkError):
        await store.create_thread(metadata=METADATA)


@pytest_asyncio.fixture
async def garbling_server():
    """A server that answers every request 200 with a JSON content type and the body it is
    given (`server.body`): a reply no store can read."""
    server = types.SimpleNamespace(body=b"")

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=server.body, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    listener = socket.create_server(("127.0.0.1", 0))
    await web.SockSite(runner, listener).start()
    server.url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    yield server
    await runner.cleanup()


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("body", [b"not json", b"{}", b'{"id": null, "data": []}'])
async def test_an_append_reply_without_the_new_ids_is_a_sink_error(garbling_server, api, body):
    garbling_server.body = body
    store = thread_store(store_config(garbling_server.url, api))
    try:
        with pytest.raises(SinkError) as caught:
            await store.append_messages(thread_id="thread_1", messages=outgoing(2))
        assert not isinstance(caught.value, AppendInterrupted)
    finally:
        await store.aclose()
