"""The USE_FOUNDRY_THREADS flag (django-flags): its default from the environment, overrides from
the admin, and a cached check cheap enough for every chat turn."""

import threading
import time

from django.conf import settings
from django.db import transaction
from flags.models import FlagState
from flags.state import flag_state

FLAG_NAME = "USE_FOUNDRY_THREADS"

_lock = threading.Lock()
_cached: tuple[float, bool] | None = None  # (expires at, value)


def foundry_threads_enabled() -> bool:
    """The flag's effective value, read from the database at most once per
    FOUNDRY_FLAG_CACHE_S per process: so a change in the admin reaches every process within
    seconds and no chat turn pays a query for it."""
    global _cached
    cached = _cached
    now = time.monotonic()
    if cached is not None and cached[0] > now:
        return cached[1]
    with _lock:
        value = bool(flag_state(FLAG_NAME))
        _cached = (now + settings.FOUNDRY_FLAG_CACHE_S, value)
    return value


def forget_cached_flag() -> None:
    global _cached
    _cached = None


def flag_overrides() -> list[FlagState]:
    return list(FlagState.objects.filter(name=FLAG_NAME).order_by("id"))


def flag_source() -> str:
    """Where the effective value comes from, for operators."""
    overrides = flag_overrides()
    default = "true" if settings.USE_FOUNDRY_THREADS else "false"
    if not overrides:
        return f"environment (USE_FOUNDRY_THREADS={default})"
    conditions = "; ".join(str(o) for o in overrides)
    return f"admin override ({conditions}), over the environment default {default}"


@transaction.atomic
def flag_override(value: bool | None) -> None:
    """Force the flag on or off for every process, or (None) go back to the environment default.

    Off is a *required* false condition, so it wins over the settings' default even when that
    is true (django-flags: any optional condition true, and all required ones true)."""
    FlagState.objects.filter(name=FLAG_NAME, condition="boolean").delete()
    if value is True:
        FlagState.objects.create(name=FLAG_NAME, condition="boolean", value="True")
    elif value is False:
        FlagState.objects.create(name=FLAG_NAME, condition="boolean", value="False", required=True)
    transaction.on_commit(forget_cached_flag)
