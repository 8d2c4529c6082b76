"""Local emulator of the Azure AI Foundry threads API and of the new Foundry conversations API.

The real `azure.ai.agents` clients (classic threads) and the openai clients that
`azure.ai.projects.AIProjectClient.get_openai_client()` returns (conversations, under
`{project endpoint}/openai/v1`) work against it unmodified, sync and aio, with one set of fault
knobs for tests, benchmarks and operators trying the product without an Azure account.
"""

from .cli import add_arguments, state_from_options
from .server import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    STATE_KEY,
    EmulatorServer,
    check_bind_host,
    create_app,
    run_emulator,
)
from .state import EmulatorState, Fault, FaultKnobs, validate_knobs
from .store import ThreadStore

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "STATE_KEY",
    "EmulatorServer",
    "EmulatorState",
    "Fault",
    "FaultKnobs",
    "ThreadStore",
    "add_arguments",
    "check_bind_host",
    "create_app",
    "run_emulator",
    "state_from_options",
    "validate_knobs",
]
