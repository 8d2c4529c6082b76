"""`manage.py foundry_import_thread USER SESSION_ID THREAD_ID`: point a session at an existing
Foundry thread (a move to a new database, a thread made elsewhere). The session's next turn reads
the thread's newest page; the thread's messages go into the local store before the session's
own (at once for a short thread, else through the background sender), and the session then
carries on on that thread."""

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from sessions_app import services
from sessions_app.models import identifier_validator


class Command(BaseCommand):
    help = (
        "Point a chat session at an existing Foundry thread; its history loads from its next turn."
    )

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("session_id")
        parser.add_argument("thread_id")
        parser.add_argument("--agent-id", default=settings.CHAT_DEFAULT_AGENT)
        parser.add_argument("--project-id", default=settings.CHAT_DEFAULT_PROJECT)

    def handle(self, *args, username, session_id, thread_id, agent_id, project_id, **options):
        try:
            user = get_user_model().objects.get(username=username)
        except get_user_model().DoesNotExist:
            raise CommandError(f"No user {username!r}") from None
        for value in (session_id, agent_id, project_id):
            try:
                identifier_validator(value)
            except ValidationError as exc:
                raise CommandError(f"{value!r}: {exc.messages[0]}") from None
        key = {"agent_id": agent_id, "project_id": project_id, "session_id": session_id}
        session = services.session_attach_remote(
            user=user, key=key, sink_name="foundry", remote_id=thread_id
        )
        self.stdout.write(
            f"Session {session.session_key} now uses Foundry thread {thread_id}; "
            "its history loads from the next turn on."
        )
