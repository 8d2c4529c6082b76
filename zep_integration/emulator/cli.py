"""Command-line options of the emulator, shared by `manage.py zep_emulator` and any wrapper.

The options match the Foundry emulator's (`foundry_integration.emulator.cli`) except for the
default port. The management command stays thin:

    add_arguments(parser)
    ...
    run_emulator(host=options["host"], port=options["port"],
                 allow_remote=options["allow_remote"], state=state_from_options(options))
"""

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .server import DEFAULT_HOST, DEFAULT_PORT
from .state import ZepEmulatorState


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --host, --port, --allow-remote, --latency-ms, --error-rate, --seed and --store."""
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help=f"bind address (default {DEFAULT_HOST})"
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})"
    )
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback --host; the emulator accepts any API key",
    )
    parser.add_argument(
        "--latency-ms",
        type=_non_negative_float,
        default=0.0,
        help="delay added to every API request",
    )
    parser.add_argument(
        "--error-rate",
        type=_fraction,
        default=0.0,
        help="fraction (0..1) of API requests answered 500",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for --error-rate draws")
    parser.add_argument(
        "--store",
        type=Path,
        default=None,
        metavar="PATH",
        help="persist users, threads and messages to this JSON file (default: in memory)",
    )


def state_from_options(options: Mapping[str, Any]) -> ZepEmulatorState:
    """The ZepEmulatorState the parsed options describe; absent options keep their defaults."""
    return ZepEmulatorState(
        store_path=options.get("store"),
        latency_ms=options.get("latency_ms") or 0.0,
        error_rate=options.get("error_rate") or 0.0,
        seed=options.get("seed"),
    )


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {raw}")
    return value


def _fraction(raw: str) -> float:
    value = float(raw)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {raw}")
    return value
