"""Emulator state: the store, the fault knobs and the request counters.

One `EmulatorState` backs one running app and both API surfaces (threads and conversations): a
knob such as `throttle_next` counts down across requests to either. Tests in the same process may
read it and assign knobs directly; `configure_faults` is the validated path that the control
endpoint uses too.
"""

import enum
import random
import threading
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .store import ThreadStore


class Fault(enum.Enum):
    """What the fault knobs make of one API request instead of answering it normally."""

    DROP = "drop"  # close the connection without any response
    THROTTLE = "throttle"  # 429 with Retry-After
    FAIL = "fail"  # 500 from fail_next
    RANDOM_ERROR = "random_error"  # 500 from error_rate


_INTEGER_KNOBS = ("throttle_next", "drop_next", "fail_next", "retry_after_s")


@dataclass(kw_only=True)
class FaultKnobs:
    """The knobs' values; the defaults are a healthy service."""

    latency_ms: float = 0.0
    error_rate: float = 0.0
    seed: int | None = None
    throttle_next: int = 0
    retry_after_s: int = 1
    drop_next: int = 0
    fail_next: int = 0


KNOB_NAMES = tuple(knob.name for knob in fields(FaultKnobs))


def validate_knobs(knobs: dict[str, Any]) -> None:
    """Check knob names and values; raise ValueError saying what is wrong.

    latency_ms >= 0, 0 <= error_rate <= 1, seed an integer or null, and throttle_next,
    drop_next, fail_next and retry_after_s integers >= 0.
    """
    unknown = sorted(set(knobs) - set(KNOB_NAMES))
    if unknown:
        raise ValueError(f"unknown knob(s) {unknown}; known: {list(KNOB_NAMES)}")
    for name, value in knobs.items():
        if name == "seed":
            if value is not None and not _is_int(value):
                raise ValueError("seed must be an integer or null")
        elif name in _INTEGER_KNOBS:
            if not _is_int(value) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0")
        elif not _is_number(value) or value < 0:
            raise ValueError(f"{name} must be a number >= 0")
        elif name == "error_rate" and value > 1:
            raise ValueError("error_rate must be between 0 and 1")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass
class RequestCounters:
    """Counts of API requests that reached the emulator, faulted ones included."""

    total: int = 0
    by_route: Counter[str] = field(default_factory=Counter)
    by_status: Counter[str] = field(default_factory=Counter)
    by_auth: Counter[str] = field(default_factory=Counter)


@dataclass(kw_only=True)
class EmulatorState(FaultKnobs):
    """The store (in memory, or the JSON file `store_path`), the fault knobs and the counters.

    Knob semantics, checked per API request in this order, at most one fault per request:
    `latency_ms` delays every request; `drop_next` requests lose their connection; `throttle_next`
    requests get 429 + `Retry-After: retry_after_s`; `fail_next` requests get 500; otherwise a
    fraction `error_rate` get 500, drawn from `random.Random(seed)` once per request that reaches
    that check, so a seeded run repeats exactly.
    """

    store_path: Path | None = None
    store: ThreadStore = field(init=False, repr=False)
    counters: RequestCounters = field(init=False, default_factory=RequestCounters)
    _rng: random.Random = field(init=False, repr=False)
    _lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        validate_knobs(self.knobs())
        self.store = ThreadStore(Path(self.store_path) if self.store_path is not None else None)
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
        """Knobs, counters and store sizes as JSON-ready data (the `/_emulator/state` body).

        `store` keeps its original thread-only shape; conversation sizes are in `conversations`.
        """
        threads, messages = self.store.counts()
        conversations, items = self.store.conversation_counts()
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
                    "threads": threads,
                    "messages": messages,
                },
                "conversations": {"conversations": conversations, "items": items},
            }
