"""The REST API. Views only translate between HTTP and the services and selectors."""

import logging

from django.conf import settings
from django.db import connection
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.exceptions import APIException, NotFound
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from sessions_app import selectors, services
from sessions_app.models import ChatSession
from sessions_app.pagination import MessageCursorPagination, SessionCursorPagination
from sessions_app.serializers import (
    ChatReplySerializer,
    ChatRequestSerializer,
    MessageSerializer,
    SessionLookupSerializer,
    SessionSerializer,
)
from sessions_app.sinks import all_sinks, warm_up_wait

logger = logging.getLogger(__name__)

SESSION_LOOKUP_PARAMETERS = [
    OpenApiParameter("agent_id", str, description="Agent of the session (default agent if unset)."),
    OpenApiParameter("project_id", str, description="Project of the session (default if unset)."),
]


class AgentFailedError(APIException):
    status_code = status.HTTP_502_BAD_GATEWAY
    default_code = "agent_failed"
    default_detail = "The agent failed to answer; your message is saved, please try again."


class SessionGoneError(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "session_deleted"
    default_detail = "The session was deleted while the agent was answering."


def run_chat_turn(**kwargs) -> services.ChatTurn:
    """`services.chat_turn` with its failures turned into API errors (for REST and WebSocket)."""
    try:
        return services.chat_turn(**kwargs)
    except services.AgentFailed:
        raise AgentFailedError() from None
    except services.SessionGone:
        raise SessionGoneError() from None


class ChatView(APIView):
    @extend_schema(request=ChatRequestSerializer, responses=ChatReplySerializer)
    def post(self, request: Request) -> Response:
        """Send a message and get the agent's reply. Without session_id a new session starts."""
        serializer = ChatRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        turn = run_chat_turn(user=request.user, **serializer.validated_data)
        return Response(ChatReplySerializer(turn).data)


class SessionListView(APIView):
    @extend_schema(
        responses=SessionSerializer(many=True),
        parameters=[OpenApiParameter("cursor", str), OpenApiParameter("page_size", int)],
    )
    def get(self, request: Request) -> Response:
        """The caller's sessions, most recently active first."""
        paginator = SessionCursorPagination()
        page = paginator.paginate_queryset(selectors.session_list(user=request.user), request, self)
        return paginator.get_paginated_response(SessionSerializer(page, many=True).data)


class SessionLookupMixin:
    def get_session(self, request: Request, session_id: str) -> ChatSession:
        lookup = SessionLookupSerializer(data=request.query_params)
        lookup.is_valid(raise_exception=True)
        try:
            return selectors.session_get(
                user=request.user, session_id=session_id, **lookup.validated_data
            )
        except ChatSession.DoesNotExist:
            raise NotFound("No such session.") from None


class SessionDetailView(SessionLookupMixin, APIView):
    @extend_schema(responses=SessionSerializer, parameters=SESSION_LOOKUP_PARAMETERS)
    def get(self, request: Request, session_id: str) -> Response:
        """One of the caller's sessions, with its thread id."""
        return Response(SessionSerializer(self.get_session(request, session_id)).data)

    @extend_schema(responses={204: None}, parameters=SESSION_LOOKUP_PARAMETERS)
    def delete(self, request: Request, session_id: str) -> Response:
        """Delete the session and its history."""
        services.session_delete(session=self.get_session(request, session_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


class SessionMessagesView(SessionLookupMixin, APIView):
    @extend_schema(
        responses=MessageSerializer(many=True),
        parameters=[
            *SESSION_LOOKUP_PARAMETERS,
            OpenApiParameter("cursor", str),
            OpenApiParameter("page_size", int),
        ],
    )
    def get(self, request: Request, session_id: str) -> Response:
        """The session's history, oldest first."""
        session = self.get_session(request, session_id)
        paginator = MessageCursorPagination()
        page = paginator.paginate_queryset(
            selectors.session_messages(session=session), request, self
        )
        return paginator.get_paginated_response(MessageSerializer(page, many=True).data)


class HealthView(APIView):
    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema(
        responses={
            200: inline_serializer(
                "Health",
                {
                    "status": serializers.CharField(),
                    "database": serializers.CharField(),
                    "sinks": serializers.DictField(child=serializers.DictField()),
                },
            ),
            503: None,
        }
    )
    def get(self, request: Request) -> Response:
        """Liveness, database reachability, and whether each persistence sink takes turns (and
        why not), for load balancers and operators. A process's first check waits (at most
        SINK_WARM_UP_WAIT_S) for its sinks' warm-up, so that a readiness probe sends it traffic
        only once a first turn would not wait for the SDK's start-up."""
        warm_up_wait(settings.SINK_WARM_UP_WAIT_S)
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            database = "ok"
        except Exception:
            logger.exception("Health check: database unreachable")
            database = "unavailable"
        healthy = database == "ok"
        sinks = {}
        for sink in all_sinks():
            status_ = sink.status()
            sinks[sink.name] = {"active": status_.active, "reason": status_.reason}
        return Response(
            {"status": "ok" if healthy else "degraded", "database": database, "sinks": sinks},
            status=status.HTTP_200_OK if healthy else status.HTTP_503_SERVICE_UNAVAILABLE,
        )
