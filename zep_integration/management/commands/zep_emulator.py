"""`manage.py zep_emulator [--port 8701]`: a local Zep server (the Zep Cloud v4 API and the
Community Edition v2 API) for trying Zep memory without an account, and for tests and
benchmarks (fault knobs included)."""

from django.core.management.base import BaseCommand

from foundry_integration.emulator.kit import run_command
from zep_integration.emulator import add_arguments, run_emulator, state_from_options


class Command(BaseCommand):
    help = "Serve a local emulator of Zep (Cloud v4 and Community Edition v2 APIs)."

    def add_arguments(self, parser):
        add_arguments(parser)

    def handle(self, *args, **options):
        run_command(options, run_emulator=run_emulator, state_from_options=state_from_options)
