"""Emulator state: the store, the fault knobs and the request counters.

The knobs, their validation, the fault kinds and the counters are the Foundry emulator's own
(`foundry_integration.emulator.state`), so both emulators take the same knobs with the same
meaning. Only the store differs, and the Foundry `EmulatorState` builds its own store in
`__post_init__`, so the knob bookkeeping below mirrors that class instead of inheriting from it.
"""

import random
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from foundry_integration.emulator.state import (
    KNOB_NAMES,
    Fault,
    FaultKnobs,
    RequestCounters,
    validate_knobs,
)

from .store import ZepStore


@dataclass(kw_only=True)
class ZepEmulatorState(FaultKnobs):
    """The store (in memory, or the JSON file `store_path`), the fault knobs and the counters.

    Knob semantics, checked per API request in this order, at most one fault per request:
    `latency_ms` delays every request; `drop_next` requests lose their connection before they
    are handled; `throttle_next` requests get 429 + `Retry-After: retry_after_s` with a
    text/plain body; `fail_next` requests get 500; otherwise a fraction `error_rate` get 500,
    drawn from `random.Random(seed)` once per request that reaches that check, so a seeded run
    repeats exactly. A faulted request changes nothing in the store.
    """

    store_path: Path | None = None
    store: ZepStore = field(init=False, repr=False)
    counters: RequestCounters = field(init=False, default_factory=RequestCounters)
    _rng: random.Random = field(init=False, repr=False)
    _lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        validate_knobs(self.knobs())
        self.store = ZepStore(Path(self.store_path) if self.store_path is not None else None)
        self._rng = random.Random(self.seed)

    def knobs(self) -> dict[str, Any]:
        """The current knob values by name."""
        return {name: getattr(self, name) for name in KNOB_NAMES}

    def configure_faults(self, **knobs: Any) -> None:
        """Validate and set the given knobs, leaving the others; passing `seed` reseeds the draw.

        Raises ValueError (and changes nothing) on an unknown knob or a bad value.
        """
        validate_knobs(knobs)
        with self._lock:
            for name, value in knobs.items():
                setattr(self, name, value)
            if "seed" in knobs:
                self._rng = random.Random(self.seed)

    def reset(self, *, clear_data: bool = False) -> None:
        """Restore every knob to its default and zero the counters; optionally empty the store."""
        with self._lock:
            for name, value in asdict(FaultKnobs()).items():
                setattr(self, name, value)
            self._rng = random.Random(self.seed)
            self.counters = RequestCounters()
        if clear_data:
            self.store.clear()

    def record_request(self, *, route: str, auth: str) -> None:
        """Count one API request by route template (`METHOD /path/{param}`) and auth kind."""
        with self._lock:
            self.counters.total += 1
            self.counters.by_route[route] += 1
            self.counters.by_auth[auth] += 1

    def record_outcome(self, outcome: str) -> None:
        """Count how an API request was answered: its status code, or `dropped`."""
        with self._lock:
            self.counters.by_status[outcome] += 1

    def take_fault(self) -> Fault | None:
        """Decide (and consume) the fault for the next API request, if any."""
        with self._lock:
            if self.drop_next > 0:
                self.drop_next -= 1
                return Fault.DROP
            if self.throttle_next > 0:
                self.throttle_next -= 1
                return Fault.THROTTLE
            if self.fail_next > 0:
                self.fail_next -= 1
                return Fault.FAIL
            if self.error_rate > 0 and self._rng.random() < self.error_rate:
                return Fault.RANDOM_ERROR
            return None

    def snapshot(self) -> dict[str, Any]:
        """Knobs, counters and store sizes as JSON-ready data (the `/_emulator/state` body)."""
        counts = self.store.counts()
        with self._lock:
            return {
                "faults": self.knobs(),
                "requests": {
                    "total": self.counters.total,
                    "by_route": dict(self.counters.by_route),
                    "by_status": dict(self.counters.by_status),
                    "by_auth": dict(self.counters.by_auth),
                },
                "store": {
                    "path": str(self.store_path) if self.store_path is not None else None,
                    **counts,
                },
            }
