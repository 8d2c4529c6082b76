"""ASGI middleware in front of Django."""

import json
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.db import close_old_connections

from sessions_app.errors import error_body
from sessions_app.sinks import warm_up_sinks
from sessions_app.sync import start_in_process_sender


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
    made for the request; here the whole chain runs in one hop to a bounded, long-lived thread
    pool, whose threads keep their database connections between requests (CONN_MAX_AGE).
    SERVER_SYNC_THREADS bounds how many requests run at once in a process."""

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
        # Django wraps each request in a ThreadSensitiveContext, which starts a thread for the
        # request and joins it afterwards. Here the request's work runs in the pool; all that
        # is left thread-sensitive is the request_started/finished receivers and
        # response.close(), which share asgiref's one long-lived thread instead.
        await self.handle(scope, receive, send)

    async def get_response_async(self, request):
        return await sync_to_async(
            self._get_response_in_pool, thread_sensitive=False, executor=self.executor
        )(request)

    def _get_response_in_pool(self, request):
        # What request_started/finished do under WSGI, in the thread that owns the connections.
        close_old_connections()
        try:
            return self.get_response(request)
        finally:
            close_old_connections()
