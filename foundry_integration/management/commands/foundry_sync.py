"""`manage.py foundry_sync`: the background sender as a worker process.

Delivers pending turns (and remote deletions) to every active sink: Foundry threads and the
other configured sinks. Run as many as you like, on any machines sharing the database; set
SYNC_IN_PROCESS=false on the server processes when you do.
"""

import asyncio
import signal
import threading

from django.core.management.base import BaseCommand

from sessions_app.sync import Sender


class Command(BaseCommand):
    help = "Deliver pending chat turns to Foundry (and the other sinks) until stopped."

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="One pass, then exit.")
        parser.add_argument("--name", help="Worker name in claims and logs (default host:pid).")

    def handle(self, *args, once: bool, name: str | None, **options):
        sender = Sender(name=name)
        if once:
            handled = asyncio.run(sender.run_once_and_close())
            self.stdout.write(f"Handled {handled} sessions and deletions")
            return
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        asyncio.run(sender.run(stop))
