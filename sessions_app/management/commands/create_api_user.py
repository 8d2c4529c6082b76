"""`manage.py create_api_user NAME`: make (or reuse) a user and print its API token."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from rest_framework.authtoken.models import Token


class Command(BaseCommand):
    help = "Create an API user (or reuse an existing one) and print its token."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument(
            "--rotate", action="store_true", help="Replace the user's token with a new one."
        )

    def handle(self, *args, username: str, rotate: bool, **options):
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
        self.stdout.write(token.key)
