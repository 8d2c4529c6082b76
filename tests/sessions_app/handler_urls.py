"""Views for tests/sessions_app/test_middleware.py: each notes the thread it ran in."""

import asyncio
import threading

from django.db import connections
from django.http import HttpResponse, StreamingHttpResponse
from django.urls import path

from sessions_app.models import ChatSession

events: list[tuple[str, str]] = []  # (what happened, the name of the thread it happened in)
release_slow = threading.Event()


def note(what: str) -> None:
    events.append((what, threading.current_thread().name))


def plain(request):
    note("view")
    return HttpResponse(b"plain body")


def streamed(request):
    note("view")

    def chunks():
        for n in range(3):
            note(f"chunk {n}")
            yield f"part {n};".encode()

    return StreamingHttpResponse(chunks())


def endless(request):
    note("view")

    async def ticks():
        while True:
            await asyncio.sleep(0.01)
            yield b"tick;"

    return StreamingHttpResponse(ticks())


def broken_stream(request):
    note("view")

    def chunks():
        yield b"part 0;"
        raise RuntimeError("the body broke off")

    return StreamingHttpResponse(chunks())


def plain_db(request):
    note("view")
    return HttpResponse(str(ChatSession.objects.count()).encode())


def streamed_db(request):
    note("view")
    count = ChatSession.objects.count()
    view_connection = connections["default"]  # this thread's

    def body():
        # Sent once the view's thread is done with the request, maybe from another thread.
        note(
            "connection held" if view_connection.connection is not None else "connection given back"
        )
        # And a body that reads the database, in the thread Django sends it from.
        yield str(ChatSession.objects.count() - count).encode()

    return StreamingHttpResponse(body())


def slow(request):
    note("view")
    release_slow.wait(timeout=10)
    note("view done")
    return HttpResponse(b"too late")


urlpatterns = [
    path("plain", plain),
    path("streamed", streamed),
    path("plain-db", plain_db),
    path("streamed-db", streamed_db),
    path("slow", slow),
    path("endless", endless),
    path("broken-stream", broken_stream),
]
