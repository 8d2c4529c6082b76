"""The sink registry: one instance of each configured sink per process."""

import threading
import time

from sessions_app import sinks
from sessions_app.sinks import Sink, SinkStatus


class SlowSink(Sink):
    name = "slow"

    def __init__(self) -> None:
        time.sleep(0.05)  # as long as a real sink's setup may take, GIL released

    def status(self) -> SinkStatus:
        return SinkStatus(False, "test")


def test_threads_asking_at_once_get_the_same_sinks(settings):
    settings.CHAT_SINKS = [f"{__name__}.SlowSink"]
    start, seen = threading.Barrier(8), []

    def ask() -> None:
        start.wait()
        seen.append(sinks.all_sinks())

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len({id(instances[0]) for instances in seen}) == 1
    assert seen[0] == sinks.all_sinks()
