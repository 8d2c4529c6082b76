"""What a server process keeps for its whole life, taken out of the garbage collector's reach."""

import gc


def freeze_long_lived() -> None:
    """Collect what is garbage now, then move every object still tracked into the collector's
    permanent generation, which its collections never walk.

    A full collection (every few thousand requests) walks every tracked object, holding the
    interpreter's lock: a stall for every request in flight, and the longer the more the process
    has loaded. Call this once the process has loaded what it keeps: at start-up, and again once
    the sinks' SDKs are imported, which happens after start-up (their warm-up, on the first
    connection).

    What a request in flight holds at that moment is frozen too. It is freed as usual once
    nothing refers to it; only a reference cycle among it is never collected (a few objects,
    once)."""
    gc.collect()
    gc.freeze()
