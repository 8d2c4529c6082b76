"""`manage.py foundry_emulator [--port 8700]`: a local Azure AI Foundry (the Agents threads API
and the conversations API) for trying the Foundry flag without an Azure account, and for tests
and benchmarks (fault knobs included)."""

from django.core.management.base import BaseCommand, CommandError

from foundry_integration.emulator import add_arguments, run_emulator, state_from_options


class Command(BaseCommand):
    help = "Serve a local emulator of Azure AI Foundry: Agents threads and conversations."

    def add_arguments(self, parser):
        add_arguments(parser)

    def handle(self, *args, **options):
        try:
            run_emulator(
                host=options["host"],
                port=options["port"],
                allow_remote=options["allow_remote"],
                state=state_from_options(options),
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
