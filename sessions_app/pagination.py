from django.conf import settings
from rest_framework.pagination import CursorPagination


class SessionCursorPagination(CursorPagination):
    ordering = ("-last_activity_at", "-id")
    page_size = settings.CHAT_PAGE_SIZE
    page_size_query_param = "page_size"
    max_page_size = settings.CHAT_MAX_PAGE_SIZE


class MessageCursorPagination(SessionCursorPagination):
    ordering = ("seq",)
