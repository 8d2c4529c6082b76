"""ASGI entry point: HTTP goes to Django, WebSocket to the chat consumer.

Serve it with `daphne chatproject.asgi:application` (or `manage.py runserver`, which uses Daphne).
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")
# Django must be set up before anything imports models.
django_asgi_app = get_asgi_application()

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
