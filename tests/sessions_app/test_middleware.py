"""The project's ASGI handler for Django (sessions_app.middleware.PooledSyncASGIHandler): a
request is one hop to its thread pool, which runs the request_started and request_finished
receivers (they close the thread's stale database connections), the middleware and the view,
as a WSGI server would; a streamed body is closed only once it has been sent. A request whose
client left while it waited for a thread is dropped; one that has started runs to its end."""

import asyncio

import pytest
from asgiref.sync import sync_to_async
from channels.testing import ApplicationCommunicator
from django.core import signals
from django.db import connection

from sessions_app.middleware import PooledSyncASGIHandler
from tests.sessions_app import handler_urls
from tests.sessions_app.handler_urls import events, note
from tests.sessions_app.test_connections import checked_out

# The request_finished receivers close stale database connections in whichever thread ends a
# request, which may be one that an earlier test left a connection in.
pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def handler(settings):
    settings.ROOT_URLCONF = "tests.sessions_app.handler_urls"
    events.clear()
    handler_urls.release_slow.clear()

    def started(**kwargs):
        note("request_started")

    def finished(**kwargs):
        note("request_finished")

    signals.request_started.connect(started)
    signals.request_finished.connect(finished)
    handler = PooledSyncASGIHandler()
    yield handler
    handler_urls.release_slow.set()
    signals.request_started.disconnect(started)
    signals.request_finished.disconnect(finished)
    handler.executor.shutdown(wait=True)


def request(handler, path: str, query_string: bytes = b"") -> ApplicationCommunicator:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query_string,
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    return ApplicationCommunicator(handler, scope)


async def response_of(communicator: ApplicationCommunicator) -> tuple[int, bytes]:
    await communicator.send_input({"type": "http.request", "body": b""})
    start = await communicator.receive_output(timeout=5)
    assert start["type"] == "http.response.start"
    body = b""
    while True:
        message = await communicator.receive_output(timeout=5)
        assert message["type"] == "http.response.body"
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    await communicator.wait(timeout=5)
    return start["status"], body


async def noted(what: str) -> None:
    while what not in [noted for noted, _ in events]:
        await asyncio.sleep(0.02)


def names(threads: set[str]) -> set[str]:
    return {name.rsplit("_", 1)[0] for name in threads}


async def test_receivers_middleware_and_view_run_in_one_pool_thread(handler):
    for _ in range(3):
        assert await response_of(request(handler, "/plain")) == (200, b"plain body")
    assert [what for what, _ in events] == ["request_started", "view", "request_finished"] * 3
    assert names({thread for _, thread in events}) == {"django-sync"}
    for n in range(3):
        # Each request's receivers ran in the thread that ran its view.
        assert len({thread for _, thread in events[3 * n : 3 * n + 3]}) == 1


async def test_a_streamed_response_ends_the_request_after_its_last_chunk(handler):
    status, body = await response_of(request(handler, "/streamed"))
    assert (status, body) == (200, b"part 0;part 1;part 2;")
    assert [what for what, _ in events] == [
        "request_started",
        "view",
        "chunk 0",
        "chunk 1",
        "chunk 2",
        "request_finished",
    ]
    assert names({events[0][1], events[1][1]}) == {"django-sync"}


async def test_a_client_gone_mid_view_lets_the_view_end_and_ends_the_request(handler):
    communicator = request(handler, "/slow")
    await communicator.send_input({"type": "http.request", "body": b""})
    await asyncio.wait_for(noted("view"), timeout=5)
    await communicator.send_input({"type": "http.disconnect"})
    await asyncio.sleep(0.1)
    assert [what for what, _ in events] == ["request_started", "view"]
    handler_urls.release_slow.set()
    await communicator.wait(timeout=5)
    # The view ran to its end, and its request ended once (what it answered, the server drops).
    assert [what for what, _ in events] == [
        "request_started",
        "view",
        "view done",
        "request_finished",
    ]


async def test_a_request_whose_client_left_while_it_waited_for_a_thread_is_dropped(
    handler, settings
):
    settings.SERVER_SYNC_THREADS = 1
    one_thread = PooledSyncASGIHandler()
    try:
        busy = request(one_thread, "/slow")
        await busy.send_input({"type": "http.request", "body": b""})
        await asyncio.wait_for(noted("view"), timeout=5)
        queued = request(one_thread, "/plain")
        await queued.send_input({"type": "http.request", "body": b""})
        await queued.send_input({"type": "http.disconnect"})
        await asyncio.sleep(0.1)
        handler_urls.release_slow.set()
        await busy.wait(timeout=5)
        await queued.wait(timeout=5)
    finally:
        one_thread.executor.shutdown(wait=True)
    # Only the slow request ran; the queued one never started.
    assert [what for what, _ in events] == [
        "request_started",
        "view",
        "view done",
        "request_finished",
    ]
    assert await queued.receive_nothing()


async def test_a_failing_request_finished_receiver_does_not_cost_the_answer(handler, caplog):
    def fail(**kwargs):
        raise RuntimeError("receiver broke")

    signals.request_finished.connect(fail)
    try:
        assert await response_of(request(handler, "/plain")) == (200, b"plain body")
    finally:
        signals.request_finished.disconnect(fail)
    assert "Closing the response of /plain failed" in caplog.text


async def test_a_streamed_body_that_breaks_off_still_ends_the_request(handler):
    communicator = request(handler, "/broken-stream")
    await communicator.send_input({"type": "http.request", "body": b""})
    with pytest.raises(RuntimeError, match="the body broke off"):
        await communicator.wait(timeout=5)
    assert [what for what, _ in events][-1] == "request_finished"


async def test_a_disconnect_stops_a_streamed_body_and_ends_the_request(handler):
    communicator = request(handler, "/endless")
    await communicator.send_input({"type": "http.request", "body": b""})
    assert (await communicator.receive_output(timeout=5))["type"] == "http.response.start"
    for _ in range(3):
        assert (await communicator.receive_output(timeout=5))["body"] == b"tick;"
    await communicator.send_input({"type": "http.disconnect"})
    await communicator.wait(timeout=5)
    assert [what for what, _ in events] == ["request_started", "view", "request_finished"]


async def test_a_request_django_cannot_read_gets_400_and_ends(handler):
    status, _ = await response_of(request(handler, "/plain", query_string=b"\xff"))
    assert status == 400
    assert [what for what, _ in events] == ["request_started", "request_finished"]
    assert names({thread for _, thread in events}) == {"django-sync"}


@pytest.mark.parametrize("path", ["/plain-db", "/streamed-db"])
async def test_the_view_thread_gives_its_database_connection_back(handler, path):
    if connection.vendor != "postgresql" or connection.pool is None:
        pytest.skip("only PostgreSQL with DATABASE_POOL has a connection pool")
    before = await sync_to_async(checked_out)()
    # More requests than the pool holds connections: each must give its own back.
    for _ in range(connection.pool.max_size + 2):
        assert await response_of(request(handler, path)) == (200, b"0")
    assert await sync_to_async(checked_out)() == before
    # A streamed body is sent, and the request ended, after the view's thread is done with it
    # (and maybe from another thread): that thread gave its connection back first.
    assert "connection held" not in [what for what, _ in events]
