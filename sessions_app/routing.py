from django.urls import re_path

from sessions_app.consumers import ChatConsumer

websocket_urlpatterns = [
    re_path(r"^api/v1/chat/ws/(?P<session_id>[^/]+)$", ChatConsumer.as_asgi()),
]
