"""ASGI entry point: HTTP goes to Django, WebSocket to the chat consumer.

Serve it with `daphne chatproject.asgi:application` (or `manage.py runserver`, which uses Daphne).
"""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")
# Django must be set up before anything imports models.
django.setup(set_prefix=False)

from sessions_app.middleware import PooledSyncASGIHandler  # noqa: E402

django_asgi_app = PooledSyncASGIHandler()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import get_resolver  # noqa: E402

from sessions_app.auth import WebSocketAuthMiddleware  # noqa: E402
from sessions_app.heap import freeze_long_lived  # noqa: E402
from sessions_app.middleware import RequestBodyLimit, StartSender  # noqa: E402
from sessions_app.routing import websocket_urlpatterns  # noqa: E402

# Load the URL configuration (views, DRF, serializers) now rather than on the first request,
# then take all that lives for the process out of the garbage collector's reach: the full
# collections (every few thousand requests) walked all of it, stalling a request about 80 ms.
get_resolver().url_patterns  # noqa: B018
freeze_long_lived()

application = StartSender(
    ProtocolTypeRouter(
        {
            "http": RequestBodyLimit(django_asgi_app),
            "websocket": WebSocketAuthMiddleware(URLRouter(websocket_urlpatterns)),
        }
    )
)
