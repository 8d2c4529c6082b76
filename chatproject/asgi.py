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

from sessions_app.auth import WebSocketAuthMiddleware  # noqa: E402
from sessions_app.middleware import RequestBodyLimit, StartSender  # noqa: E402
from sessions_app.routing import websocket_urlpatterns  # noqa: E402

application = StartSender(
    ProtocolTypeRouter(
        {
            "http": RequestBodyLimit(django_asgi_app),
            "websocket": WebSocketAuthMiddleware(URLRouter(websocket_urlpatterns)),
        }
    )
)
