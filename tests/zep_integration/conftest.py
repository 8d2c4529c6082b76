import pytest

from zep_integration.emulator import ZepEmulatorServer


@pytest.fixture
def zep_emulator():
    with ZepEmulatorServer() as server:
        yield server


@pytest.fixture(params=["cloud", "community"])
def zep(request, settings, zep_emulator):
    """Zep on (through the emulator) with one SDK or the other; fast retries for tests."""
    settings.ZEP_SDK = request.param
    settings.ZEP_API_URL = (
        zep_emulator.cloud_base_url if request.param == "cloud" else zep_emulator.base_url
    )
    settings.ZEP_API_KEY = "emulator-key"
    settings.ZEP_TIMEOUT_S = 2
    settings.SYNC_BACKOFF_BASE_S = 0.01
    settings.SYNC_BACKOFF_MAX_S = 0.05
    settings.SYNC_BREAKER_COOLDOWN_S = 0.2
    return zep_emulator


def zep_messages(emulator, remote_id: str) -> list[tuple[str, str]]:
    """(role, content) of every stored message (part) of a Zep thread, oldest first."""
    return [(m["role"], m["content"]) for m in emulator.state.store.messages_anywhere(remote_id)]
