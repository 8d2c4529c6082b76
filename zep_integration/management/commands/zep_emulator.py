"""`manage.py zep_emulator [--port 8701]`: a local Zep server (the Zep Cloud v4 API and the
Community Edition v2 API) for trying Zep memory without an account, and for tests and
benchmarks (fault knobs included)."""

from django.core.management.base import BaseCommand, CommandError

from zep_integration.emulator import add_arguments, run_emulator, state_from_options


class Command(BaseCommand):
    help = "Serve a local emulator of Zep (Cloud v4 and Community Edition v2 APIs)."

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
