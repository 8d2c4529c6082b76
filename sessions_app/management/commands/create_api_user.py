"""`manage.py create_api_user NAME [NAME ...]`: make (or reuse) users and print their API tokens,
one line each, in the order given."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from rest_framework.authtoken.models import Token


class Command(BaseCommand):
    help = "Create API users (or reuse existing ones) and print their tokens, one per line."

    def add_arguments(self, parser):
        parser.add_argument("usernames", nargs="+", metavar="username")
        parser.add_argument(
            "--rotate", action="store_true", help="Replace the users' tokens with new ones."
        )

    def handle(self, *args, usernames: list[str], rotate: bool, **options):
        for username in usernames:
            self.stdout.write(self._token(username, rotate=rotate))

    def _token(self, username: str, *, rotate: bool) -> str:
        User = get_user_model()
        user, created = User.objects.get_or_create(username=username)
        if created:
            # No password: the user authenticates with the token (set one with changepassword).
            user.set_unusable_password()
            user.save()
        if rotate:
            Token.objects.filter(user=user).delete()
        token, _ = Token.objects.get_or_create(user=user)
        verb = "Created" if created else "Using existing"
        self.stderr.write(f"{verb} user {username!r}; its API token:")
        return token.key
