"""Command-line options of the emulator, shared by `manage.py zep_emulator` and any wrapper.

The options match the Foundry emulator's (`foundry_integration.emulator.kit.EmulatorCli`) except
for the default port. The management command stays thin:

    add_arguments(parser)
    ...
    run_emulator(host=options["host"], port=options["port"],
                 allow_remote=options["allow_remote"], state=state_from_options(options))
"""

from foundry_integration.emulator.kit import EmulatorCli

from .server import DEFAULT_PORT
from .state import ZepEmulatorState

_CLI = EmulatorCli(
    default_port=DEFAULT_PORT,
    state_factory=ZepEmulatorState,
    remote_help="allow a non-loopback --host; the emulator accepts any API key",
    store_help="persist users, threads and messages to this JSON file (default: in memory)",
)

# Add --host, --port, --allow-remote, --latency-ms, --error-rate, --seed and --store.
add_arguments = _CLI.add_arguments
# The ZepEmulatorState the parsed options describe; absent options keep their defaults.
state_from_options = _CLI.state_from_options
