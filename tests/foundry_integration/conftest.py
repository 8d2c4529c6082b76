import asyncio
import time

import pytest

from foundry_integration.flag import forget_cached_flag
from sessions_app.models import RemoteDeletion, SinkState
from sessions_app.sync import Sender

PROJECT = "testproj"


def flag_settings(value: bool) -> dict:
    return {"USE_FOUNDRY_THREADS": [{"condition": "boolean", "value": value}]}


@pytest.fixture(params=["agents", "conversations"])
def foundry(request, settings, emulator):
    """The app pointed at the emulator with the flag on, once per Foundry API; fast retries."""
    yield from configure_foundry(settings, emulator, request.param)


@pytest.fixture
def foundry_agents(settings, emulator):
    """`foundry` on the classic threads API only."""
    yield from configure_foundry(settings, emulator, "agents")


def configure_foundry(settings, emulator, api: str):
    settings.FOUNDRY_THREAD_API = api
    settings.AZURE_FOUNDRY_AGENT_ENDPOINT = emulator.base_url
    settings.AZURE_FOUNDRY_AGENT_PROJECT = PROJECT
    settings.AZURE_FOUNDRY_AGENT_KEY = "emulator-key"
    settings.FLAGS = flag_settings(True)
    settings.FOUNDRY_CONNECT_TIMEOUT_S = 2
    settings.FOUNDRY_READ_TIMEOUT_S = 2
    settings.SYNC_BACKOFF_BASE_S = 0.01
    settings.SYNC_BACKOFF_MAX_S = 0.05
    settings.SYNC_BREAKER_COOLDOWN_S = 0.2
    forget_cached_flag()
    yield emulator
    forget_cached_flag()


def sync_pass(sender: Sender | None = None) -> int:
    return asyncio.run((sender or Sender(name="test")).run_once_and_close())


class PacerProbe:
    """In place of the in-process sender's pacer, whose clocks a test cannot set call by call:
    it never holds the sender back, and notes how many requests had reached the emulator each
    time it was asked."""

    def __init__(self, emulator) -> None:
        self.emulator = emulator
        self.seen: list[int] = []

    async def wait(self) -> None:
        self.seen.append(self.emulator.state.counters.total)


def settled() -> bool:
    return not RemoteDeletion.objects.exists() and all(
        s.delivered_seq == s.wanted_seq for s in SinkState.objects.all()
    )


def drain(timeout: float = 15) -> None:
    """Run sender passes until every turn is delivered and every deletion done."""
    deadline = time.monotonic() + timeout
    while not settled():
        assert time.monotonic() < deadline, list(SinkState.objects.values())
        sync_pass()
        time.sleep(0.02)


def thread_messages(emulator, thread_id: str) -> list[tuple[str, str]]:
    """(role, text) of every message on a thread or conversation, oldest first."""
    if thread_id.startswith("conv_"):
        items = emulator.state.store.items_anywhere(thread_id) or []
        return [(i["role"], "".join(p["text"] for p in i["content"])) for i in items]
    messages = emulator.state.store.messages_anywhere(thread_id) or []
    return [(m["role"], m["content"][0]["text"]["value"]) for m in messages]


def thread_exists(emulator, thread_id: str) -> bool:
    store = emulator.state.store
    found = (
        store.items_anywhere(thread_id)
        if thread_id.startswith("conv_")
        else (store.messages_anywhere(thread_id))
    )
    return found is not None


def threads_created(emulator) -> int:
    """Threads plus conversations ever created (deleted ones included)."""
    by_route = emulator.state.counters.by_route
    return sum(
        count
        for route, count in by_route.items()
        if route in ("POST /api/projects/{project}/threads",)
        or route.endswith("/openai/v1/conversations")
    )


def lose_thread(emulator, thread_id: str) -> bool:
    store = emulator.state.store
    if thread_id.startswith("conv_"):
        return store.remove_conversation_anywhere(thread_id)
    return store.remove_thread_anywhere(thread_id)
