"""The chat WebSocket: `/api/v1/chat/ws/{session_id}`.

Protocol (JSON text frames):
- client -> server: `{"type": "message", "message": str, "agent_id"?: str, "project_id"?: str}`
- server -> client: `{"type": "chunk", "delta": str}` as the reply grows (the deltas concatenate
  to the reply), then `{"type": "reply", "session_id", "agent_id", "project_id", "reply",
  "thread_id", "persistence"}` (the REST reply's fields).
- bad input: `{"type": "error", "code": str, "detail": str, "fields"?: {...}}`; the socket stays
  open.
- close codes: 4401 not authenticated, 4400 invalid session id in the URL.

Every socket open on the same (user, session_id), in any tab, device or server process, gets the
chunk and reply frames of every turn sent through any of them: the frames go to a channel group.
Turns sent on one socket run one after another, in the order they were sent.
"""

import asyncio
import hashlib
import json
import logging
import re

from channels.generic.websocket import AsyncWebsocketConsumer
from rest_framework.exceptions import APIException, ValidationError

from sessions_app.errors import error_body, validation_error_body
from sessions_app.models import IDENTIFIER_PATTERN
from sessions_app.serializers import ChatReplySerializer, ChatRequestSerializer
from sessions_app.sync import db
from sessions_app.views import run_chat_turn

logger = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401
CLOSE_INVALID_SESSION = 4400
# Turns a socket may have waiting behind the one running; more is a client bug or abuse.
MAX_QUEUED_TURNS = 8


def session_group_name(user_pk: int, session_id: str) -> str:
    """The channel group of one user's session id (group names allow few characters)."""
    digest = hashlib.sha256(f"{user_pk}:{session_id}".encode()).hexdigest()[:40]
    return f"chat.{digest}"


class ChatConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        self.group_name = None
        self.connected = True
        self.turn_lock = asyncio.Lock()
        self.turn_tasks: set[asyncio.Task] = set()
        subprotocols = self.scope.get("subprotocols") or []
        await self.accept("token" if "token" in subprotocols else None)
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.session_id = self.scope["url_route"]["kwargs"]["session_id"]
        if not re.fullmatch(IDENTIFIER_PATTERN, self.session_id):
            await self.send_error("invalid_session_id", "Invalid session id in the URL.")
            await self.close(code=CLOSE_INVALID_SESSION)
            return
        self.group_name = session_group_name(user.pk, self.session_id)
        await self.channel_layer.group_add(self.group_name, self.channel_name)

    async def disconnect(self, code: int) -> None:
        # Turns already sent still finish and are stored; their frames reach the other sockets.
        self.connected = False
        if self.group_name is not None:
            await self.channel_layer.group_discard(self.group_name, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.group_name is None:
            return
        if text_data is None:
            await self.send_error("invalid_frame", "Send JSON text frames.")
            return
        try:
            frame = json.loads(text_data)
        except ValueError:
            await self.send_error("invalid_json", "The frame is not valid JSON.")
            return
        if not isinstance(frame, dict) or frame.get("type") != "message":
            await self.send_error("unknown_type", 'Send {"type": "message", "message": "..."}.')
            return
        request = ChatRequestSerializer(
            data={k: v for k, v in frame.items() if k in ("message", "agent_id", "project_id")}
        )
        if not request.is_valid():
            await self.send_frame({"type": "error", **validation_error_body(request.errors)})
            return
        if len(self.turn_tasks) > MAX_QUEUED_TURNS:
            await self.send_error("too_many_turns", "Wait for the replies before sending more.")
            return
        # The turn runs as its own task so that this consumer keeps dispatching group frames
        # (the chunks of this very turn among them) while the agent answers.
        task = asyncio.create_task(self.run_turn(request.validated_data))
        self.turn_tasks.add(task)
        task.add_done_callback(self.turn_tasks.discard)

    async def run_turn(self, request: dict) -> None:
        async with self.turn_lock:
            await self._run_turn(request)

    async def _run_turn(self, request: dict) -> None:
        loop = asyncio.get_running_loop()
        deltas: asyncio.Queue[str | None] = asyncio.Queue()

        def on_chunk(delta: str) -> None:
            loop.call_soon_threadsafe(deltas.put_nowait, delta)

        # Not thread-sensitive: turns of different sockets run in parallel worker threads.
        turn_task = asyncio.ensure_future(
            db(run_chat_turn)(
                user=self.scope["user"], session_id=self.session_id, on_chunk=on_chunk, **request
            )
        )
        # Scheduled after every chunk the worker thread queued, so the chunks come first.
        turn_task.add_done_callback(lambda _: deltas.put_nowait(None))
        while (delta := await deltas.get()) is not None:
            await self.group_frame({"type": "chunk", "delta": delta})
        try:
            turn = turn_task.result()
        except ValidationError as exc:
            await self.send_frame({"type": "error", **validation_error_body(exc.detail)})
            return
        except APIException as exc:
            await self.send_error(exc.get_codes(), str(exc.detail))
            return
        except Exception:
            logger.exception("Chat turn failed on WebSocket session %s", self.session_id)
            await self.send_error("server_error", "Internal server error.")
            return
        await self.group_frame({"type": "reply", **ChatReplySerializer(turn).data})

    async def group_frame(self, frame: dict) -> None:
        await self.channel_layer.group_send(self.group_name, {"type": "chat.frame", "frame": frame})

    async def chat_frame(self, event: dict) -> None:
        """A frame for every socket of the session (from the channel group)."""
        await self.send_frame(event["frame"])

    async def send_error(self, code: str, detail: str) -> None:
        await self.send_frame({"type": "error", **error_body(code, detail)})

    async def send_frame(self, frame: dict) -> None:
        if self.connected:
            await self.send(text_data=json.dumps(frame))
