"""Command-line options of the emulator, shared by `manage.py foundry_emulator` and any wrapper.

The management command stays thin:

    add_arguments(parser)
    ...
    run_emulator(host=options["host"], port=options["port"],
                 allow_remote=options["allow_remote"], state=state_from_options(options))
"""

from .kit import EmulatorCli
from .server import DEFAULT_PORT
from .state import EmulatorState

_CLI = EmulatorCli(
    default_port=DEFAULT_PORT,
    state_factory=EmulatorState,
    remote_help="allow a non-loopback --host; the emulator accepts any credential",
    store_help="persist threads and conversations to this JSON file (default: in memory)",
)

# Add --host, --port, --allow-remote, --latency-ms, --error-rate, --seed and --store.
add_arguments = _CLI.add_arguments
# The EmulatorState the parsed options describe; absent options keep their defaults.
state_from_options = _CLI.state_from_options
