"""Emulator state: the store, the fault knobs and the request counters.

One `EmulatorState` backs one running app and both API surfaces (threads and conversations): a
knob such as `throttle_next` counts down across requests to either. Tests in the same process may
read it and assign knobs directly; `configure_faults` is the validated path that the control
endpoint uses too.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .kit import (
    KNOB_NAMES,
    Fault,
    FaultKnobs,
    KnobState,
    RequestCounters,
    validate_knobs,
)
from .store import ThreadStore

__all__ = [
    "KNOB_NAMES",
    "EmulatorState",
    "Fault",
    "FaultKnobs",
    "RequestCounters",
    "validate_knobs",
]


@dataclass(kw_only=True)
class EmulatorState(KnobState[ThreadStore]):
    """The store (in memory, or the JSON file `store_path`), the fault knobs and the counters.

    Knob semantics, checked per API request in this order, at most one fault per request:
    `latency_ms` delays every request; `drop_next` requests lose their connection; `throttle_next`
    requests get 429 + `Retry-After: retry_after_s`; `fail_next` requests get 500; otherwise a
    fraction `error_rate` get 500, drawn from `random.Random(seed)` once per request that reaches
    that check, so a seeded run repeats exactly.
    """

    def _open_store(self, path: Path | None) -> ThreadStore:
        return ThreadStore(path)

    def _store_sizes(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """`store` keeps its original thread-only shape; conversation sizes are separate."""
        threads, messages = self.store.counts()
        conversations, items = self.store.conversation_counts()
        return (
            {"threads": threads, "messages": messages},
            {"conversations": {"conversations": conversations, "items": items}},
        )
