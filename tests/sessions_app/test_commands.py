"""`manage.py create_api_user`: the tokens it prints authenticate their users."""

import io

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


def create_api_users(*args: str) -> list[str]:
    out = io.StringIO()
    call_command("create_api_user", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue().split()


def whose(token: str) -> int:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client.get("/api/v1/sessions").status_code


def test_one_token_per_user_in_the_order_given(make_user):
    make_user("bob")
    tokens = create_api_users("carol", "bob", "dave")
    assert len(set(tokens)) == 3
    assert [whose(token) for token in tokens] == [200, 200, 200]
    # Run again: the same tokens; --rotate replaces them.
    assert create_api_users("dave", "carol") == [tokens[2], tokens[0]]
    rotated = create_api_users("carol", "--rotate")
    assert rotated != [tokens[0]]
    assert whose(tokens[0]) == 401
    assert whose(rotated[0]) == 200
