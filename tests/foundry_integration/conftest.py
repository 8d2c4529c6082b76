import asyncio
import time

import pytest

from foundry_integration.emulator import EmulatorServer
from foundry_integration.flag import forget_cached_flag
from sessions_app.models import RemoteDeletion, SinkState
from sessions_app.sync import Sender

PROJECT = "testproj"


@pytest.fixture
def emulator():
    with EmulatorServer() as server:
        yield server


def flag_settings(value: bool) -> dict:
    return {"USE_FOUNDRY_THREADS": [{"condition": "boolean", "value": value}]}


@pytest.fixture
def foundry(settings, emulator):
    """The app pointed at the emulator with the flag on; fast retries for tests."""
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
    messages = emulator.state.store.messages_anywhere(thread_id) or []
    return [(m["role"], m["content"][0]["text"]["value"]) for m in messages]
