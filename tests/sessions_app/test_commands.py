"""`manage.py create_api_user`: the tokens it prints authenticate their users."""

import io

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from sessions_app.models import ChatSession

pytestmark = pytest.mark.django_db


def create_api_users(*args: str) -> list[str]:
    out = io.StringIO()
    call_command("create_api_user", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue().split()


def whose(token: str) -> str | int:
    """The user the token authenticates (its username), or the HTTP status it gets."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    response = client.post("/api/v1/chat", {"message": "who am I?"}, format="json")
    if response.status_code != 200:
        return response.status_code
    return ChatSession.objects.get(session_id=response.json()["session_id"]).owner.username


def test_one_token_per_user_in_the_order_given(make_user):
    make_user("bob")
    tokens = create_api_users("carol", "bob", "dave")
    assert [whose(token) for token in tokens] == ["carol", "bob", "dave"]
    # Run again: the same tokens; --rotate replaces them.
    assert create_api_users("dave", "carol") == [tokens[2], tokens[0]]
    rotated = create_api_users("carol", "--rotate")
    assert rotated != [tokens[0]]
    assert whose(tokens[0]) == 401
    assert whose(rotated[0]) == "carol"
