"""`manage.py foundry_emulator [--port 8700]`: a local Azure AI Foundry (the Agents threads API
and the conversations API) for trying the Foundry flag without an Azure account, and for tests
and benchmarks (fault knobs included)."""

from django.core.management.base import BaseCommand

from foundry_integration.emulator import add_arguments, run_emulator, state_from_options
from foundry_integration.emulator.kit import run_command


class Command(BaseCommand):
    help = "Serve a local emulator of Azure AI Foundry: Agents threads and conversations."

    def add_arguments(self, parser):
        add_arguments(parser)

    def handle(self, *args, **options):
        run_command(options, run_emulator=run_emulator, state_from_options=state_from_options)
