"""WebSocket authentication: a DRF token, or the Django session cookie.

The token comes in the `Sec-WebSocket-Protocol` header as the pair of subprotocols
`token, <key>` (browsers: `new WebSocket(url, ["token", key])`) or as `?token=<key>`.
Without a token, the session cookie is used, but only when the request's Origin is absent
(not a browser) or one of ALLOWED_HOSTS, so another site cannot ride a browser's cookie.
"""

from urllib.parse import parse_qs, urlparse

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.http.request import split_domain_port, validate_host
from rest_framework.authtoken.models import Token

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


def _user_for_token(key: str):
    try:
        token = Token.objects.select_related("user").get(key=key)
    except Token.DoesNotExist:
        return AnonymousUser()
    return token.user if token.user.is_active else AnonymousUser()


user_for_token = database_sync_to_async(_user_for_token, thread_sensitive=False)


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
