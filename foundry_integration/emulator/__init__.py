"""Local emulator of the Azure AI Foundry classic Agent Service threads API.

The real `azure.ai.agents` clients (sync and aio) work against it unmodified, with fault knobs
for tests, benchmarks and operators trying the product without an Azure account.
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
