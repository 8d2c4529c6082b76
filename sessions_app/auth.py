"""Authentication by API token (REST and WebSocket), and the WebSocket's session cookie.

REST takes the token as `Authorization: Token <key>`, as DRF's TokenAuthentication does. On a
WebSocket the token comes in the `Sec-WebSocket-Protocol` header as the pair of subprotocols
`token, <key>` (browsers: `new WebSocket(url, ["token", key])`) or as `?token=<key>`.
Without a token, the session cookie is used, but only when the request's Origin is absent
(not a browser) or one of ALLOWED_HOSTS, so another site cannot ride a browser's cookie.
"""

import functools
from urllib.parse import parse_qs, urlparse

from channels.auth import AuthMiddlewareStack
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.http.request import split_domain_port, validate_host
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token
from rest_framework.exceptions import AuthenticationFailed

from sessions_app import sql
from sessions_app.sync import db

TOKEN_SUBPROTOCOL = "token"


def token_from_scope(scope: dict) -> str | None:
    subprotocols = scope.get("subprotocols") or []
    if TOKEN_SUBPROTOCOL in subprotocols:
        index = subprotocols.index(TOKEN_SUBPROTOCOL)
        if index + 1 < len(subprotocols):
            return subprotocols[index + 1]
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    tokens = query.get("token")
    return tokens[0] if tokens else None


def origin_allows_cookie(scope: dict) -> bool:
    origins = [value for name, value in scope.get("headers", []) if name == b"origin"]
    if not origins:
        return True
    host = urlparse(origins[0].decode("latin-1")).netloc
    domain, _ = split_domain_port(host)
    return bool(domain) and validate_host(domain, settings.ALLOWED_HOSTS)


def token_user(key: str) -> AbstractBaseUser | None:
    """The active user whose API token is `key`, else None. Every REST request asks, so it is
    one SQL statement (see sessions_app.sql); the user's other fields (username, ...) cost a
    query each on first access."""
    User = get_user_model()
    row = sql.fetch_one(_token_user_sql(User), [key, True])
    if row is None:
        return None
    return sql.instance(User, {User._meta.pk.attname: row[0], "is_active": True})


@functools.cache
def _token_user_sql(User: type[AbstractBaseUser]) -> str:
    user_pk = sql.column(User, User._meta.pk.attname)
    return (
        f"SELECT u.{user_pk} FROM {sql.table(User)} u JOIN {sql.table(Token)} t "
        f"ON t.{sql.column(Token, 'user_id')} = u.{user_pk} "
        f"WHERE t.{sql.column(Token, 'key')} = %s AND u.{sql.column(User, 'is_active')} = %s"
    )


class APITokenAuthentication(TokenAuthentication):
    """DRF's TokenAuthentication (the same `Authorization: Token <key>` header) with the
    one-statement lookup; an unknown key and an inactive user's key both get 401 "Invalid
    token."."""

    def authenticate_credentials(self, key: str) -> tuple[AbstractBaseUser, Token]:
        user = token_user(key)
        if user is None:
            # Also for an inactive user: nothing to tell a caller about an account it cannot use.
            raise AuthenticationFailed("Invalid token.")
        token = sql.instance(Token, {"key": key, "user_id": user.pk})
        token.user = user
        return user, token


def _user_for_token(key: str):
    return token_user(key) or AnonymousUser()


user_for_token = db(_user_for_token)


class WebSocketAuthMiddleware:
    """Sets scope["user"]; the consumer closes unauthenticated sockets with code 4401."""

    def __init__(self, inner):
        self.inner = inner
        self.cookie_auth = AuthMiddlewareStack(inner)

    async def __call__(self, scope, receive, send):
        scope = dict(scope)
        key = token_from_scope(scope)
        if key is not None:
            scope["user"] = await user_for_token(key)
            return await self.inner(scope, receive, send)
        if origin_allows_cookie(scope):
            return await self.cookie_auth(scope, receive, send)
        scope["user"] = AnonymousUser()
        return await self.inner(scope, receive, send)
