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
import threading
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Self

from aiohttp import web

from foundry_integration.emulator.server import check_bind_host
from foundry_integration.emulator.state import Fault

from .cloud_api import add_cloud_routes
from .common import CLOUD_ROOT, STATE_KEY, error_response, json_body, store_of
from .community_api import add_community_routes
from .state import ZepEmulatorState
from .store import StoredResponse
from .wire import ApiError

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
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
    app.router.add_get("/_emulator/state", _control_state)
    app.router.add_post("/_emulator/faults", _control_faults)
    app.router.add_post("/_emulator/reset", _control_reset)
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
    state.record_request(route=_route_template(request), auth=auth)
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


def _route_template(request: web.Request) -> str:
    resource = request.match_info.route.resource
    template = resource.canonical if resource is not None else request.path
    return f"{request.method} {template}"


async def _not_implemented(request: web.Request) -> web.Response:
    raise ApiError(
        501,
        f"The Zep emulator does not implement {request.method} {request.path}; it serves "
        "users, threads and messages (v4) and users, sessions and memory (v2).",
    )


async def _control_state(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE_KEY].snapshot())


async def _control_faults(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        state.configure_faults(**await json_body(request))
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    return web.json_response(state.snapshot())


async def _control_reset(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    state.reset(clear_data=request.query.get("data", "").lower() in ("1", "true", "yes"))
    return web.json_response(state.snapshot())


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
    check_bind_host(host, allow_remote=allow_remote)
    state = state if state is not None else ZepEmulatorState()
    store = state.store_path if state.store_path is not None else "in memory"
    logger.info(
        "Zep emulator: zep-cloud base_url http://%s:%d/api/v4, zep-python base_url "
        "http://%s:%d, store %s",
        host,
        port,
        host,
        port,
        store,
    )
    web.run_app(create_app(state=state), host=host, port=port)


class ZepEmulatorServer:
    """The emulator on a free loopback port, served from a background thread with its own loop.

    For tests and benchmarks: `start()` returns the base URL, `stop()` shuts it down, and the
    object is a context manager. `state` is shared with the running app, so knobs can be set
    in-process between requests.
    """

    def __init__(
        self, state: ZepEmulatorState | None = None, *, host: str = DEFAULT_HOST, port: int = 0
    ) -> None:
        self.state = state if state is not None else ZepEmulatorState()
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._startup_error: BaseException | None = None

    @property
    def base_url(self) -> str:
        """`http://HOST:PORT` of the running server: zep-python's base_url (it adds /api/v2)."""
        if self._thread is None:
            raise RuntimeError("the emulator server is not running")
        return f"http://{self.host}:{self.port}"

    @property
    def cloud_base_url(self) -> str:
        """zep-cloud's base_url: `{base_url}/api/v4` (that SDK uses its base_url as given)."""
        return f"{self.base_url}{CLOUD_ROOT}"

    def start(self) -> str:
        """Start serving and return the base URL once the port is bound."""
        if self._thread is not None:
            raise RuntimeError("the emulator server is already running")
        ready = threading.Event()
        self._startup_error = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._serve, args=(ready,), name="zep-emulator", daemon=True
        )
        self._thread.start()
        ready.wait()
        if self._startup_error is not None:
            self._thread.join()
            self._thread = None
            raise self._startup_error
        return self.base_url

    def stop(self) -> None:
        """Stop serving and wait for the background thread; a no-op when not running."""
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._thread = None
        self._loop = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _serve(self, ready: threading.Event) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            runner = loop.run_until_complete(self._start_runner())
        except BaseException as exc:  # handed to start(), which re-raises it in the caller
            self._startup_error = exc
            loop.close()
            ready.set()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    async def _start_runner(self) -> web.AppRunner:
        # A short shutdown timeout: stop() should not wait on the SDKs' idle keep-alive sockets.
        runner = web.AppRunner(create_app(state=self.state), shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, self.host, self.port).start()
        self.port = runner.addresses[0][1]
        return runner
