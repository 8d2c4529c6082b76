"""HTTP side of the emulator: the aiohttp app, the blocking CLI runner and a background test server.

One app serves both Zep APIs on one port: Zep Cloud v4 under `/api/v4` (zep-cloud) and the
Community Edition v2 under `/api/v2` (zep-python). Each API request passes the fault knobs, then
auth (`Authorization: Api-Key <key>`, any non-empty key), then - for v4 mutations that carry an
`Idempotency-Key` - the idempotency check. Control routes live under `/_emulator` and are never
faulted, counted or authenticated.
"""

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from foundry_integration.emulator.kit import (
    DEFAULT_HOST,
    BackgroundServer,
    Fault,
    add_knob_control_routes,
    route_template,
    serve_forever,
)
from foundry_integration.emulator.kit import (
    check_bind_host as check_bind_host,  # re-exported: public API here
)

from .cloud_api import add_cloud_routes
from .common import CLOUD_ROOT, STATE_KEY, error_response, store_of
from .community_api import add_community_routes
from .state import ZepEmulatorState
from .store import StoredResponse
from .wire import ApiError

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8701
API_PREFIX = "/api/"

# nginx's "connection closed without response"; a dropped request only shows it in the access log.
_STATUS_DROPPED = 444
_MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(*, state: ZepEmulatorState | None = None) -> web.Application:
    """An aiohttp app serving both Zep APIs and the `/_emulator` control routes over `state`.

    Without `state`, a fresh in-memory state with no faults is used; read it back through
    `app[STATE_KEY]`.
    """
    # Zep accepts up to 5 MB per request; aiohttp's default of 1 MiB could refuse a full batch
    # of 30 escaped non-ASCII messages.
    app = web.Application(middlewares=[_api_middleware], client_max_size=5 * 1024 * 1024)
    app[STATE_KEY] = state if state is not None else ZepEmulatorState()
    add_cloud_routes(app.router)
    add_community_routes(app.router)
    # Everything else under /api (graph, agents, v3, ...) gets the API's own error body, not
    # aiohttp's plain-text 404/405, so SDK callers see a typed error with a clear message.
    app.router.add_route("*", "/api/{tail:.*}", _not_implemented)
    add_knob_control_routes(app, STATE_KEY, ApiError)
    app.router.add_delete("/_emulator/threads/{thread_ref}", _control_delete_thread)
    app.router.add_get("/_emulator/threads/{thread_ref}/messages", _control_messages)
    return app


@web.middleware
async def _api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith(API_PREFIX):
        return await _call_handler(request, handler)
    state = request.app[STATE_KEY]
    auth = _auth_kind(request)
    # Counted before anything can fail, so "zero requests reached the emulator" is assertable.
    state.record_request(route=route_template(request), auth=auth)
    # The body is received before the delay, like a slow service that has the whole request:
    # a client that times out during the delay loses the answer, and the write still lands.
    await request.read()
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
    request: web.Request,
    handler: Handler,
    *,
    fault: Fault | None,
    auth: str,
    state: ZepEmulatorState,
) -> web.StreamResponse:
    if fault is Fault.THROTTLE:
        # Zep Cloud's rate limiter answers in plain text, not in the API's JSON error body.
        return web.Response(
            status=429,
            text="Rate limit exceeded (emulator throttle_next).\n",
            content_type="text/plain",
            headers={"Retry-After": str(state.retry_after_s)},
        )
    if fault is Fault.FAIL:
        return error_response(request, ApiError(500, "Internal server error (emulator fail_next)."))
    if fault is Fault.RANDOM_ERROR:
        return error_response(
            request, ApiError(500, "Internal server error (emulator error_rate).")
        )
    if auth != "api-key":
        return error_response(
            request, ApiError(401, "Unauthorized: send 'Authorization: Api-Key <key>'.")
        )
    idempotency_key = request.headers.get("Idempotency-Key")
    if (
        idempotency_key
        and request.method in _MUTATING_METHODS
        and request.path.startswith(f"{CLOUD_ROOT}/")
    ):
        return await _answer_idempotently(request, handler, idempotency_key)
    return await _call_handler(request, handler)


async def _answer_idempotently(
    request: web.Request, handler: Handler, idempotency_key: str
) -> web.StreamResponse:
    """Handle a v4 mutation once per (method, path, key); repeats get the first answer.

    Answers below 500 are kept and replayed with `Idempotent-Replayed: true`; a 5xx leaves the
    key unused, so a retry is handled afresh. Faults never reach this point. Requests sharing a
    key cannot interleave: from the lookup to keeping the answer nothing yields to the event
    loop (the middleware has read the body, so every later read returns the cached bytes).
    """
    store = store_of(request)
    scope = f"{request.method} {request.path_qs} {idempotency_key}"
    fingerprint = hashlib.sha256(await request.read()).hexdigest()
    try:
        replay = store.find_idempotent_response(scope, fingerprint)
    except ApiError as exc:
        return error_response(request, exc)
    if replay is not None:
        return web.Response(
            status=replay.status,
            text=replay.body,
            content_type=replay.content_type,
            headers={"Idempotent-Replayed": "true"},
        )
    response = await _call_handler(request, handler)
    if response.status < 500 and isinstance(response, web.Response):
        store.keep_idempotent_response(
            scope,
            fingerprint,
            StoredResponse(
                status=response.status, body=response.text or "", content_type=response.content_type
            ),
        )
    return response


async def _call_handler(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(request, exc)


def _auth_kind(request: web.Request) -> str:
    """`api-key`, `missing` or `invalid` (another scheme, or no key); the key is never kept."""
    header = request.headers.get("Authorization")
    if header is None:
        return "missing"
    scheme, _, key = header.partition(" ")
    return "api-key" if scheme.lower() == "api-key" and key.strip() else "invalid"


async def _not_implemented(request: web.Request) -> web.Response:
    raise ApiError(
        501,
        f"The Zep emulator does not implement {request.method} {request.path}; it serves "
        "users, threads and messages (v4) and users, sessions and memory (v2).",
    )


async def _control_delete_thread(request: web.Request) -> web.Response:
    thread_ref = request.match_info["thread_ref"]
    if not store_of(request).remove_thread_anywhere(thread_ref):
        raise ApiError(404, f"No thread or session '{thread_ref}'.")
    return web.json_response({"id": thread_ref, "deleted": True})


async def _control_messages(request: web.Request) -> web.Response:
    thread_ref = request.match_info["thread_ref"]
    messages = store_of(request).messages_anywhere(thread_ref)
    if messages is None:
        raise ApiError(404, f"No thread or session '{thread_ref}'.")
    return web.json_response({"object": "list", "id": thread_ref, "data": messages})


def run_emulator(
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    state: ZepEmulatorState | None = None,
    allow_remote: bool = False,
) -> None:
    """Serve the emulator until interrupted (Ctrl+C); ValueError for a refused non-loopback host."""
    serve_forever(
        create_app,
        state,
        ZepEmulatorState,
        host=host,
        port=port,
        allow_remote=allow_remote,
        announce=lambda store: logger.info(
            "Zep emulator: zep-cloud base_url http://%s:%d/api/v4, zep-python base_url "
            "http://%s:%d, store %s",
            host,
            port,
            host,
            port,
            store,
        ),
    )


class ZepEmulatorServer(BackgroundServer[ZepEmulatorState]):
    """The Zep emulator in a background thread, for tests and benchmarks; see the base class.

    zep-python takes `base_url`, zep-cloud takes `cloud_base_url`.
    """

    def __init__(
        self, state: ZepEmulatorState | None = None, *, host: str = DEFAULT_HOST, port: int = 0
    ) -> None:
        super().__init__(
            create_app,
            state if state is not None else ZepEmulatorState(),
            host=host,
            port=port,
            thread_name="zep-emulator",
        )

    @property
    def base_url(self) -> str:
        """`http://HOST:PORT` of the running server: zep-python's base_url (it adds /api/v2)."""
        return super().base_url

    @property
    def cloud_base_url(self) -> str:
        """zep-cloud's base_url: `{base_url}/api/v4` (that SDK uses its base_url as given)."""
        return f"{self.base_url}{CLOUD_ROOT}"
