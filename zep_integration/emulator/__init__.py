"""Local emulator of the Zep REST APIs behind both official SDKs.

zep-cloud (Zep Cloud API v4, base_url `http://HOST:PORT/api/v4`) and zep-python (Community
Edition API v2, base_url `http://HOST:PORT`) work against it unmodified, on one port and one
store, with the Foundry emulator's fault knobs for tests, benchmarks and operators trying the
product without a Zep account.
"""

from .cli import add_arguments, state_from_options
from .common import STATE_KEY
from .server import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    ZepEmulatorServer,
    check_bind_host,
    create_app,
    run_emulator,
)
from .state import ZepEmulatorState
from .store import ZepStore

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "STATE_KEY",
    "ZepEmulatorServer",
    "ZepEmulatorState",
    "ZepStore",
    "add_arguments",
    "check_bind_host",
    "create_app",
    "run_emulator",
    "state_from_options",
]
