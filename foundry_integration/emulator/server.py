"""HTTP side of the emulator: the aiohttp app, the blocking CLI runner and a background test server.

API routes live under `/api/projects/{project}`: `/threads...` behaves like the classic Agent
Service threads API, `/openai/v1/conversations...` like the new Foundry conversations API that
`AIProjectClient.get_openai_client()` talks to (see `wire.py`). Each API request passes the fault
knobs, then auth, then (threads only: the OpenAI v1 surface has no api-version) the `api-version`
check. Control routes live under `/_emulator` and are never faulted, counted or authenticated.
"""

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable

from aiohttp import web

from .kit import (
    DEFAULT_HOST,
    BackgroundServer,
    add_knob_control_routes,
    read_json_object,
    route_template,
    serve_forever,
)
from .kit import check_bind_host as check_bind_host  # re-exported: public API here
from .state import EmulatorState, Fault
from .wire import (
    ApiError,
    JsonObject,
    error_body,
    item_list_object,
    parse_item_inputs,
    parse_message_input,
    parse_metadata,
    parse_page_request,
    parse_tool_resources,
)

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8700
API_PREFIX = "/api/"
PROJECT_ROOT = "/api/projects/{project}"
OPENAI_ROOT = f"{PROJECT_ROOT}/openai/v1"
CONVERSATION = f"{OPENAI_ROOT}/conversations/{{conversation_id}}"

_OPENAI_PATH = re.compile(r"^/api/projects/[^/]+/openai/")

# nginx's "connection closed without response"; a dropped request only shows it in the access log.
_STATUS_DROPPED = 444

STATE_KEY = web.AppKey("emulator_state", EmulatorState)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(*, state: EmulatorState | None = None) -> web.Application:
    """An aiohttp app serving both API surfaces and the `/_emulator` control routes over `state`.

    Without `state`, a fresh in-memory state with no faults is used; read it back through
    `app[STATE_KEY]`.
    """
    app = web.Application(middlewares=[_api_middleware])
    app[STATE_KEY] = state if state is not None else EmulatorState()
    app.router.add_post(f"{PROJECT_ROOT}/threads", _create_thread)
    app.router.add_get(f"{PROJECT_ROOT}/threads/{{thread_id}}", _get_thread)
    app.router.add_post(f"{PROJECT_ROOT}/threads/{{thread_id}}", _update_thread)
    app.router.add_delete(f"{PROJECT_ROOT}/threads/{{thread_id}}", _delete_thread)
    app.router.add_post(f"{PROJECT_ROOT}/threads/{{thread_id}}/messages", _create_message)
    app.router.add_get(f"{PROJECT_ROOT}/threads/{{thread_id}}/messages", _list_messages)
    app.router.add_post(f"{OPENAI_ROOT}/conversations", _create_conversation)
    app.router.add_get(CONVERSATION, _get_conversation)
    app.router.add_post(CONVERSATION, _update_conversation)
    app.router.add_delete(CONVERSATION, _delete_conversation)
    app.router.add_post(f"{CONVERSATION}/items", _create_items)
    app.router.add_get(f"{CONVERSATION}/items", _list_items)
    app.router.add_get(f"{CONVERSATION}/items/{{item_id}}", _get_item)
    app.router.add_delete(f"{CONVERSATION}/items/{{item_id}}", _delete_item)
    # Everything else under /api (runs, agents, responses, files, ...) gets the service's error
    # body, not aiohttp's plain-text 404/405, so SDK callers see a clear error: HttpResponseError
    # (azure-ai-agents) or InternalServerError (openai), both with status 501.
    app.router.add_route("*", "/api/{tail:.*}", _not_implemented)
    add_knob_control_routes(app, STATE_KEY, ApiError)
    app.router.add_delete("/_emulator/threads/{thread_id}", _control_delete_thread)
    app.router.add_get("/_emulator/threads/{thread_id}/messages", _control_messages)
    app.router.add_delete(
        "/_emulator/conversations/{conversation_id}", _control_delete_conversation
    )
    app.router.add_get("/_emulator/conversations/{conversation_id}/items", _control_items)
    return app


@web.middleware
async def _api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith(API_PREFIX):
        return await _call_handler(request, handler)
    state = request.app[STATE_KEY]
    auth = _auth_kind(request)
    # Counted before anything can fail, so "zero requests reached the emulator" is assertable.
    state.record_request(route=route_template(request), auth=auth)
    if state.latency_ms > 0:
        await asyncio.sleep(state.latency_ms / 1000)
    fault = state.take_fault()
    if fault is Fault.DROP:
        state.record_outcome("dropped")
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=_STATUS_DROPPED)
    response = await _answer_api_request(request, handler, fault=fault, auth=auth, state=state)
    state.record_outcome(str(response.status))
    return response


async def _answer_api_request(
    request: web.Request, handler: Handler, *, fault: Fault | None, auth: str, state: EmulatorState
) -> web.StreamResponse:
    if fault is Fault.THROTTLE:
        return _error_response(
            429,
            "Rate limit exceeded (emulator throttle_next).",
            headers={"Retry-After": str(state.retry_after_s)},
        )
    if fault is Fault.FAIL:
        return _error_response(500, "Internal server error (emulator fail_next).")
    if fault is Fault.RANDOM_ERROR:
        return _error_response(500, "Internal server error (emulator error_rate).")
    if auth == "missing":
        return _error_response(
            401, "Access denied: send 'Authorization: Bearer <token>' or an 'api-key' header."
        )
    if "api-version" not in request.query and not _OPENAI_PATH.match(request.path):
        return _error_response(400, "Missing required query parameter: 'api-version'.")
    return await _call_handler(request, handler)


async def _call_handler(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return _error_response(exc.status, exc.message)


def _auth_kind(request: web.Request) -> str:
    """`bearer`, `api-key` or `missing`; the credential itself is never kept or logged."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return "bearer"
    if request.headers.get("api-key", "").strip():
        return "api-key"
    return "missing"


def _error_response(
    status: int, message: str, *, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(error_body(message), status=status, headers=headers)


async def _json_body(request: web.Request) -> JsonObject:
    """The request's JSON object; an empty body counts as `{}`."""
    return await read_json_object(request, ApiError)


def _project_and_thread(request: web.Request) -> tuple[str, str]:
    return request.match_info["project"], request.match_info["thread_id"]


async def _create_thread(request: web.Request) -> web.Response:
    body = await _json_body(request)
    raw_messages = body.get("messages")
    if raw_messages is None:
        raw_messages = []
    if not isinstance(raw_messages, list):
        raise ApiError(400, "Invalid 'messages': expected an array.")
    messages = [
        parse_message_input(raw, param=f"messages[{index}].")
        for index, raw in enumerate(raw_messages)
    ]
    thread = request.app[STATE_KEY].store.create_thread(
        request.match_info["project"],
        metadata=parse_metadata(body.get("metadata")),
        tool_resources=parse_tool_resources(body.get("tool_resources")),
        messages=messages,
    )
    return web.json_response(thread)


async def _get_thread(request: web.Request) -> web.Response:
    project, thread_id = _project_and_thread(request)
    return web.json_response(request.app[STATE_KEY].store.get_thread(project, thread_id))


async def _update_thread(request: web.Request) -> web.Response:
    project, thread_id = _project_and_thread(request)
    body = await _json_body(request)
    # The SDK leaves out arguments that are None, so an absent (or null) field means "unchanged".
    metadata = body.get("metadata")
    tool_resources = body.get("tool_resources")
    thread = request.app[STATE_KEY].store.update_thread(
        project,
        thread_id,
        metadata=parse_metadata(metadata) if metadata is not None else None,
        tool_resources=parse_tool_resources(tool_resources) if tool_resources is not None else None,
    )
    return web.json_response(thread)


async def _delete_thread(request: web.Request) -> web.Response:
    project, thread_id = _project_and_thread(request)
    request.app[STATE_KEY].store.delete_thread(project, thread_id)
    return web.json_response({"id": thread_id, "object": "thread.deleted", "deleted": True})


async def _create_message(request: web.Request) -> web.Response:
    project, thread_id = _project_and_thread(request)
    store = request.app[STATE_KEY].store
    store.get_thread(project, thread_id)  # an unknown thread is a 404 even when the body is bad
    message = parse_message_input(await _json_body(request))
    return web.json_response(store.create_message(project, thread_id, message))


async def _list_messages(request: web.Request) -> web.Response:
    project, thread_id = _project_and_thread(request)
    store = request.app[STATE_KEY].store
    store.get_thread(project, thread_id)
    page = parse_page_request(request.query)
    return web.json_response(store.list_messages(project, thread_id, page))


def _project_and_conversation(request: web.Request) -> tuple[str, str]:
    return request.match_info["project"], request.match_info["conversation_id"]


async def _create_conversation(request: web.Request) -> web.Response:
    body = await _json_body(request)
    conversation = request.app[STATE_KEY].store.create_conversation(
        request.match_info["project"],
        metadata=parse_metadata(body.get("metadata")),
        items=parse_item_inputs(body.get("items"), required=False),
    )
    return web.json_response(conversation)


async def _get_conversation(request: web.Request) -> web.Response:
    project, conversation_id = _project_and_conversation(request)
    return web.json_response(
        request.app[STATE_KEY].store.get_conversation(project, conversation_id)
    )


async def _update_conversation(request: web.Request) -> web.Response:
    project, conversation_id = _project_and_conversation(request)
    store = request.app[STATE_KEY].store
    store.get_conversation(project, conversation_id)
    body = await _json_body(request)
    # `metadata` is the one updatable field and is required; null clears it.
    if "metadata" not in body:
        raise ApiError(400, "Missing required parameter: 'metadata'.")
    conversation = store.update_conversation(
        project, conversation_id, metadata=parse_metadata(body["metadata"])
    )
    return web.json_response(conversation)


async def _delete_conversation(request: web.Request) -> web.Response:
    project, conversation_id = _project_and_conversation(request)
    request.app[STATE_KEY].store.delete_conversation(project, conversation_id)
    return web.json_response(
        {"id": conversation_id, "object": "conversation.deleted", "deleted": True}
    )


async def _create_items(request: web.Request) -> web.Response:
    project, conversation_id = _project_and_conversation(request)
    store = request.app[STATE_KEY].store
    store.get_conversation(project, conversation_id)  # unknown conversation: 404 before a 400
    body = await _json_body(request)
    if "items" not in body:
        raise ApiError(400, "Missing required parameter: 'items'.")
    items = parse_item_inputs(body["items"], required=True)
    return web.json_response(item_list_object(store.create_items(project, conversation_id, items)))


async def _list_items(request: web.Request) -> web.Response:
    project, conversation_id = _project_and_conversation(request)
    store = request.app[STATE_KEY].store
    store.get_conversation(project, conversation_id)
    page = parse_page_request(request.query)
    return web.json_response(store.list_items(project, conversation_id, page))


async def _get_item(request: web.Request) -> web.Response:
    project, conversation_id = _project_and_conversation(request)
    item = request.app[STATE_KEY].store.get_item(
        project, conversation_id, request.match_info["item_id"]
    )
    return web.json_response(item)


async def _delete_item(request: web.Request) -> web.Response:
    project, conversation_id = _project_and_conversation(request)
    conversation = request.app[STATE_KEY].store.delete_item(
        project, conversation_id, request.match_info["item_id"]
    )
    return web.json_response(conversation)


async def _not_implemented(request: web.Request) -> web.Response:
    # openai retries every 5xx unless told otherwise; a missing route will not appear on retry.
    return _error_response(
        501,
        f"The Foundry emulator does not implement {request.method} {request.path}; "
        "it serves the classic threads and messages API and the conversations API only.",
        headers={"x-should-retry": "false"},
    )


async def _control_delete_thread(request: web.Request) -> web.Response:
    thread_id = request.match_info["thread_id"]
    if not request.app[STATE_KEY].store.remove_thread_anywhere(thread_id):
        raise ApiError(404, f"No thread found with id '{thread_id}'.")
    return web.json_response({"id": thread_id, "deleted": True})


async def _control_messages(request: web.Request) -> web.Response:
    thread_id = request.match_info["thread_id"]
    messages = request.app[STATE_KEY].store.messages_anywhere(thread_id)
    if messages is None:
        raise ApiError(404, f"No thread found with id '{thread_id}'.")
    return web.json_response({"object": "list", "thread_id": thread_id, "data": messages})


async def _control_delete_conversation(request: web.Request) -> web.Response:
    conversation_id = request.match_info["conversation_id"]
    if not request.app[STATE_KEY].store.remove_conversation_anywhere(conversation_id):
        raise ApiError(404, f"Conversation with id '{conversation_id}' not found.")
    return web.json_response({"id": conversation_id, "deleted": True})


async def _control_items(request: web.Request) -> web.Response:
    conversation_id = request.match_info["conversation_id"]
    items = request.app[STATE_KEY].store.items_anywhere(conversation_id)
    if items is None:
        raise ApiError(404, f"Conversation with id '{conversation_id}' not found.")
    return web.json_response({"object": "list", "conversation_id": conversation_id, "data": items})


def run_emulator(
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    state: EmulatorState | None = None,
    allow_remote: bool = False,
) -> None:
    """Serve the emulator until interrupted (Ctrl+C); ValueError for a refused non-loopback host."""
    serve_forever(
        create_app,
        state,
        EmulatorState,
        host=host,
        port=port,
        allow_remote=allow_remote,
        announce=lambda store: logger.info(
            "Foundry emulator: project endpoint http://%s:%d/api/projects/<project> "
            "(conversations under <endpoint>/openai/v1), store %s",
            host,
            port,
            store,
        ),
    )


class EmulatorServer(BackgroundServer[EmulatorState]):
    """The Foundry emulator in a background thread, for tests and benchmarks; see the base class.

    `project_endpoint(project)` is what the SDK clients take as their endpoint.
    """

    def __init__(
        self, state: EmulatorState | None = None, *, host: str = DEFAULT_HOST, port: int = 0
    ) -> None:
        super().__init__(
            create_app,
            state if state is not None else EmulatorState(),
            host=host,
            port=port,
            thread_name="foundry-emulator",
        )

    def project_endpoint(self, project: str = "default") -> str:
        """The SDK endpoint for `project`: `{base_url}/api/projects/{project}`."""
        return f"{self.base_url}/api/projects/{project}"
