"""`manage.py foundry_migrate_threads --to conversations [--dry-run]`: move every session's
classic Agent Service thread to a Foundry conversation, before the classic API is retired.

Safe to stop and re-run at any point: each session switches only when its copy is complete, and
a re-run resumes unfinished copies without copying anything twice. Set
FOUNDRY_THREAD_API=conversations too, so that new sessions start on conversations.
"""

import asyncio
import sys

from django.core.management.base import BaseCommand, CommandError

from foundry_integration.config import FoundryConfig
from foundry_integration.migration import MigrationBusy, migrate_session, sessions_to_migrate


class Command(BaseCommand):
    help = "Copy classic Foundry threads into conversations and switch the sessions to them."

    def add_arguments(self, parser):
        parser.add_argument("--to", required=True, choices=["conversations"])
        parser.add_argument(
            "--dry-run", action="store_true", help="Say what would be migrated; change nothing."
        )

    def handle(self, *args, dry_run: bool, **options):
        problem = FoundryConfig.from_settings().problem()
        if problem:
            raise CommandError(f"Foundry is not configured: {problem}")
        states = sessions_to_migrate()
        if dry_run:
            self.stdout.write(f"{len(states)} sessions have a classic thread to migrate:")
            for state in states:
                self.stdout.write(f"  {state.session.session_key}: {state.remote_id}")
            return
        if not states:
            self.stdout.write("Nothing to migrate.")
            return
        failures = asyncio.run(self._migrate(states))
        if failures:
            for key, error in failures:
                self.stderr.write(f"  {key}: {error}")
            raise CommandError(
                f"{len(failures)} of {len(states)} sessions not migrated; run again to resume."
            )
        self.stdout.write(f"Migrated {len(states)} sessions to conversations.")

    async def _migrate(self, states) -> list[tuple[str, str]]:
        failures = []
        copied = 0
        for done, state in enumerate(states, start=1):
            try:
                copied += (await migrate_session(state)).copied
            except MigrationBusy as exc:
                failures.append((state.session.session_key, f"busy: {exc}"))
            except Exception as exc:
                failures.append((state.session.session_key, f"{type(exc).__name__}: {exc}"))
            self._progress(done, len(states), copied, len(failures))
        return failures

    def _progress(self, done: int, total: int, copied: int, failed: int) -> None:
        line = f"{done}/{total} sessions, {copied} messages copied, {failed} failed"
        if sys.stdout.isatty():
            width = 30
            filled = width * done // total
            bar = "#" * filled + "." * (width - filled)
            self.stdout.write(f"\r[{bar}] {line}", ending="" if done < total else "\n")
            self.stdout.flush()
        elif done == total or done % max(total // 10, 1) == 0:
            self.stdout.write(line)
