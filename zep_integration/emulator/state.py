"""Emulator state: the store, the fault knobs and the request counters.

The knobs, their validation, the fault kinds, the counters and their bookkeeping are the Foundry
emulator's own (`foundry_integration.emulator.kit`), so both emulators take the same knobs with
the same meaning. Only the store differs.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foundry_integration.emulator.kit import KnobState

from .store import ZepStore


@dataclass(kw_only=True)
class ZepEmulatorState(KnobState[ZepStore]):
    """The store (in memory, or the JSON file `store_path`), the fault knobs and the counters.

    Knob semantics, checked per API request in this order, at most one fault per request:
    `latency_ms` delays every request; `drop_next` requests lose their connection before they
    are handled; `throttle_next` requests get 429 + `Retry-After: retry_after_s` with a
    text/plain body; `fail_next` requests get 500; otherwise a fraction `error_rate` get 500,
    drawn from `random.Random(seed)` once per request that reaches that check, so a seeded run
    repeats exactly. A faulted request changes nothing in the store.
    """

    def _open_store(self, path: Path | None) -> ZepStore:
        return ZepStore(path)

    def _store_sizes(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return self.store.counts(), {}
