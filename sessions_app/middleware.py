"""ASGI middleware in front of Django."""

import asyncio
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.db import close_old_connections
from django.http import FileResponse
from django.http.response import HttpResponseBase
from django.urls import set_script_prefix

from sessions_app.errors import error_body
from sessions_app.sinks import warm_up_sinks
from sessions_app.sync import start_in_process_sender

logger = logging.getLogger(__name__)


class StartSender:
    """With the first connection of a server process, start its background sender
    (SYNC_IN_PROCESS) and warm its sinks up: only processes that serve traffic do, not every
    manage.py command."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        start_in_process_sender()
        warm_up_sinks()
        return await self.app(scope, receive, send)


class RequestBodyLimit:
    """Answer 413 to an HTTP request whose body exceeds DATA_UPLOAD_MAX_MEMORY_SIZE, before Django
    reads it: Django's ASGI handler would otherwise buffer any body whole (to disk past a size)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                return await self._too_large(send)
        received = 0
        refused = False

        async def bounded_receive():
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    # Django stops reading at a disconnect; the 413 is sent below.
                    return {"type": "http.disconnect"}
            return message

        await self.app(scope, bounded_receive, send)
        if refused:
            await self._too_large(send)

    async def _too_large(self, send) -> None:
        body = json.dumps(error_body("too_large", "The request body is too large.")).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class PooledSyncASGIHandler(ASGIHandler):
    """Django's ASGI handler for a site whose middleware and views are synchronous (DRF, the
    admin). Django would run each middleware step and the view in a hop of its own to a thread
    made for the request, and the request_started/finished receivers in hops of their own. Here
    a request is one hop to a bounded, long-lived thread pool, which runs all of it as a WSGI
    server would: the receivers, the middleware and the view, in the thread that owns the
    request's database connections (kept between requests, CONN_MAX_AGE). A streamed body is
    sent and closed as Django does it. SERVER_SYNC_THREADS bounds how many requests run at once
    in a process."""

    def __init__(self) -> None:
        super().__init__()
        self.executor = ThreadPoolExecutor(
            max_workers=settings.SERVER_SYNC_THREADS, thread_name_prefix="django-sync"
        )

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        await self.handle(scope, receive, send)

    async def handle(self, scope, receive, send):
        """Django's ASGIHandler.handle, with the request's synchronous work in one hop."""
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        gone = threading.Event()
        listener = asyncio.create_task(self._note_disconnect(receive, gone))
        try:
            # A request whose client left while it waited for a thread is dropped. One that
            # has started runs to its end: a thread cannot be interrupted, and what the view
            # made must be closed.
            response = await self._in_pool(self._serve, scope, body_file, gone)
            if response is not None and response.streaming:
                await self._send_streamed(response, send, listener)
            elif response is not None and not gone.is_set():
                try:
                    await self.send_response(response, send)
                except OSError:
                    pass  # the client left meanwhile (a server may say so on send)
        finally:
            listener.cancel()
        body_file.close()

    async def _note_disconnect(self, receive, gone: threading.Event) -> None:
        try:
            await self.listen_for_disconnect(receive)
        except RequestAborted:
            gone.set()

    async def _send_streamed(self, response, send, listener: asyncio.Task) -> None:
        # As Django does: the body is sent until the client disconnects, and the response is
        # then closed (ending the request) in the thread where Django ran a synchronous
        # iterator of the body.
        sending = asyncio.create_task(self.send_response(response, send))
        try:
            done, _ = await asyncio.wait([sending, listener], return_when=asyncio.FIRST_COMPLETED)
            if sending not in done:
                sending.cancel()
                await asyncio.wait([sending])
            elif not isinstance(sending.exception(), OSError | None):
                raise sending.exception()
        finally:
            await sync_to_async(response.close)()

    def _in_pool(self, func, *args):
        return sync_to_async(func, thread_sensitive=False, executor=self.executor)(*args)

    def _serve(self, scope, body_file, gone: threading.Event) -> HttpResponseBase | None:
        if gone.is_set():
            return None
        signals.request_started.send(sender=self.__class__, scope=scope)
        try:
            request, response = self.create_request(scope, body_file)
            if request is not None:
                response = self.get_response(request)
                response._handler_class = self.__class__
                if isinstance(response, FileResponse):
                    response.block_size = self.chunk_size
        except BaseException:
            close_old_connections()  # what request_finished would have done
            raise
        if response.streaming:
            # It is closed once sent, in another thread: give back this one's database
            # connections now, as request_finished would.
            close_old_connections()
            return response
        # The body is in memory, so the request can end now, in this thread (request_finished),
        # before the body is sent: a WSGI server ends it once the body is sent. A failing
        # receiver does not cost the client its answer.
        try:
            response.close()
        except Exception:
            logger.exception("Closing the response of %s failed", scope.get("path", ""))
        return response
