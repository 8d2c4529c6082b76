"""The generic parts of a local API emulator, shared by the Foundry and the Zep emulators.

Fault knobs and their validation, request counters, the knob-state base class, the `/_emulator`
knob control routes, JSON request bodies, the loopback guard, atomic JSON store files, a
background-thread server runner, the command-line options and the management-command body. Each
emulator adds only what is specific to its API: its store, routes, auth and error bodies.
"""

import argparse
import asyncio
import enum
import json
import os
import random
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Protocol, Self, TypeVar

from aiohttp import web

from foundry_integration.loopback import is_loopback

DEFAULT_HOST = "127.0.0.1"


class Fault(enum.Enum):
    """What the fault knobs make of one API request instead of answering it normally."""

    DROP = "drop"  # close the connection without any response
    THROTTLE = "throttle"  # 429 with Retry-After
    FAIL = "fail"  # 500 from fail_next
    RANDOM_ERROR = "random_error"  # 500 from error_rate


_INTEGER_KNOBS = ("throttle_next", "drop_next", "fail_next", "retry_after_s")


@dataclass(kw_only=True)
class FaultKnobs:
    """The knobs' values; the defaults are a healthy service."""

    latency_ms: float = 0.0
    error_rate: float = 0.0
    seed: int | None = None
    throttle_next: int = 0
    retry_after_s: int = 1
    drop_next: int = 0
    fail_next: int = 0


KNOB_NAMES = tuple(knob.name for knob in fields(FaultKnobs))


def validate_knobs(knobs: dict[str, Any]) -> None:
    """Check knob names and values; raise ValueError saying what is wrong.

    latency_ms >= 0, 0 <= error_rate <= 1, seed an integer or null, and throttle_next,
    drop_next, fail_next and retry_after_s integers >= 0.
    """
    unknown = sorted(set(knobs) - set(KNOB_NAMES))
    if unknown:
        raise ValueError(f"unknown knob(s) {unknown}; known: {list(KNOB_NAMES)}")
    for name, value in knobs.items():
        if name == "seed":
            if value is not None and not _is_int(value):
                raise ValueError("seed must be an integer or null")
        elif name in _INTEGER_KNOBS:
            if not _is_int(value) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0")
        elif not _is_number(value) or value < 0:
            raise ValueError(f"{name} must be a number >= 0")
        elif name == "error_rate" and value > 1:
            raise ValueError("error_rate must be between 0 and 1")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass
class RequestCounters:
    """Counts of API requests that reached the emulator, faulted ones included."""

    total: int = 0
    by_route: Counter[str] = field(default_factory=Counter)
    by_status: Counter[str] = field(default_factory=Counter)
    by_auth: Counter[str] = field(default_factory=Counter)


class ClearableStore(Protocol):
    def clear(self) -> None: ...


StoreT = TypeVar("StoreT", bound=ClearableStore)


@dataclass(kw_only=True)
class KnobState(FaultKnobs, Generic[StoreT]):
    """A store (in memory, or the JSON file `store_path`), the fault knobs and the counters.

    Subclasses say how to open their store (`_open_store`) and how big it is (`_store_sizes`);
    the knob bookkeeping is shared. Knobs are checked per API request in the order of
    `take_fault`, at most one fault per request; `error_rate` draws from `random.Random(seed)`
    once per request that reaches that check, so a seeded run repeats exactly.
    """

    store_path: Path | None = None
    store: StoreT = field(init=False, repr=False)
    counters: RequestCounters = field(init=False, default_factory=RequestCounters)
    _rng: random.Random = field(init=False, repr=False)
    _lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        validate_knobs(self.knobs())
        self.store = self._open_store(
            Path(self.store_path) if self.store_path is not None else None
        )
        self._rng = random.Random(self.seed)

    def _open_store(self, path: Path | None) -> StoreT:
        """The store kept in the JSON file `path`, or in memory for None."""
        raise NotImplementedError

    def _store_sizes(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Sizes for the snapshot: fields added to its `store` object, and extra top-level keys."""
        raise NotImplementedError

    def knobs(self) -> dict[str, Any]:
        """The current knob values by name."""
        return {name: getattr(self, name) for name in KNOB_NAMES}

    def configure_faults(self, **knobs: Any) -> None:
        """Validate and set the given knobs, leaving the others; passing `seed` reseeds the draw.

        Raises ValueError (and changes nothing) on an unknown knob or a bad value.
        """
        validate_knobs(knobs)
        with self._lock:
            for name, value in knobs.items():
                setattr(self, name, value)
            if "seed" in knobs:
                self._rng = random.Random(self.seed)

    def reset(self, *, clear_data: bool = False) -> None:
        """Restore every knob to its default and zero the counters; optionally empty the store."""
        with self._lock:
            for name, value in asdict(FaultKnobs()).items():
                setattr(self, name, value)
            self._rng = random.Random(self.seed)
            self.counters = RequestCounters()
        if clear_data:
            self.store.clear()

    def record_request(self, *, route: str, auth: str) -> None:
        """Count one API request by route template (`METHOD /path/{param}`) and auth kind."""
        with self._lock:
            self.counters.total += 1
            self.counters.by_route[route] += 1
            self.counters.by_auth[auth] += 1

    def record_outcome(self, outcome: str) -> None:
        """Count how an API request was answered: its status code, or `dropped`."""
        with self._lock:
            self.counters.by_status[outcome] += 1

    def take_fault(self) -> Fault | None:
        """Decide (and consume) the fault for the next API request, if any."""
        with self._lock:
            if self.drop_next > 0:
                self.drop_next -= 1
                return Fault.DROP
            if self.throttle_next > 0:
                self.throttle_next -= 1
                return Fault.THROTTLE
            if self.fail_next > 0:
                self.fail_next -= 1
                return Fault.FAIL
            if self.error_rate > 0 and self._rng.random() < self.error_rate:
                return Fault.RANDOM_ERROR
            return None

    def snapshot(self) -> dict[str, Any]:
        """Knobs, counters and store sizes as JSON-ready data (the `/_emulator/state` body)."""
        store_sizes, extra = self._store_sizes()
        with self._lock:
            return {
                "faults": self.knobs(),
                "requests": {
                    "total": self.counters.total,
                    "by_route": dict(self.counters.by_route),
                    "by_status": dict(self.counters.by_status),
                    "by_auth": dict(self.counters.by_auth),
                },
                "store": {
                    "path": str(self.store_path) if self.store_path is not None else None,
                    **store_sizes,
                },
                **extra,
            }


# --- HTTP ------------------------------------------------------------------------------------

ApiErrorFactory = Callable[[int, str], Exception]


async def read_json_object(request: web.Request, api_error: ApiErrorFactory) -> dict[str, Any]:
    """The request's JSON object; an empty body counts as `{}`; `api_error(400, ...)` otherwise."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise api_error(400, "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise api_error(400, "The request body must be a JSON object.")
    return body


def route_template(request: web.Request) -> str:
    """The route a request matched, as `METHOD /path/{param}` (its path if none matched)."""
    resource = request.match_info.route.resource
    template = resource.canonical if resource is not None else request.path
    return f"{request.method} {template}"


def add_knob_control_routes(
    app: web.Application, state_key: web.AppKey[Any], api_error: ApiErrorFactory
) -> None:
    """Add `GET /_emulator/state`, `POST /_emulator/faults` and `POST /_emulator/reset`.

    Each answers the state's snapshot; a bad knob raises `api_error(400, ...)`.
    """

    async def control_state(request: web.Request) -> web.Response:
        return web.json_response(request.app[state_key].snapshot())

    async def control_faults(request: web.Request) -> web.Response:
        state = request.app[state_key]
        try:
            state.configure_faults(**await read_json_object(request, api_error))
        except ValueError as exc:
            raise api_error(400, str(exc)) from None
        return web.json_response(state.snapshot())

    async def control_reset(request: web.Request) -> web.Response:
        state = request.app[state_key]
        state.reset(clear_data=request.query.get("data", "").lower() in ("1", "true", "yes"))
        return web.json_response(state.snapshot())

    app.router.add_get("/_emulator/state", control_state)
    app.router.add_post("/_emulator/faults", control_faults)
    app.router.add_post("/_emulator/reset", control_reset)


def check_bind_host(host: str, *, allow_remote: bool) -> None:
    """Raise ValueError for a non-loopback `host` unless `allow_remote`: the auth is not real."""
    if allow_remote or is_loopback(host):
        return
    raise ValueError(
        f"Refusing to listen on {host!r}: the emulator accepts any credential. "
        "Use a loopback address, or pass --allow-remote if you really mean it."
    )


StateT = TypeVar("StateT")


def serve_forever(
    app_factory: Callable[..., web.Application],
    state: Any,
    state_factory: Callable[[], Any],
    *,
    host: str,
    port: int,
    allow_remote: bool,
    announce: Callable[[Any], None],
) -> None:
    """Check `host`, call `announce(store path or "in memory")`, then serve until interrupted.

    A None `state` is made by `state_factory`, only once `host` is accepted.
    """
    check_bind_host(host, allow_remote=allow_remote)
    state = state if state is not None else state_factory()
    announce(state.store_path if state.store_path is not None else "in memory")
    web.run_app(app_factory(state=state), host=host, port=port)


class BackgroundServer(Generic[StateT]):
    """An emulator app on a free loopback port, served from a background thread with its own loop.

    For tests and benchmarks: `start()` returns the base URL, `stop()` shuts it down (and a later
    `start()` serves again on the same port), and the object is a context manager. `state` is
    shared with the running app, so knobs can be set in-process between requests.
    """

    def __init__(
        self,
        app_factory: Callable[..., web.Application],
        state: StateT,
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        thread_name: str = "emulator",
    ) -> None:
        self.state = state
        self.host = host
        self.port = port
        self._app_factory = app_factory
        self._thread_name = thread_name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._startup_error: BaseException | None = None

    @property
    def base_url(self) -> str:
        """`http://HOST:PORT` of the running server."""
        if self._thread is None:
            raise RuntimeError("the emulator server is not running")
        return f"http://{self.host}:{self.port}"

    def start(self) -> str:
        """Start serving and return the base URL once the port is bound."""
        if self._thread is not None:
            raise RuntimeError("the emulator server is already running")
        ready = threading.Event()
        self._startup_error = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._serve, args=(ready,), name=self._thread_name, daemon=True
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
        runner = web.AppRunner(self._app_factory(state=self.state), shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, self.host, self.port).start()
        self.port = runner.addresses[0][1]
        return runner


# --- store files -----------------------------------------------------------------------------


def save_json_atomically(path: Path, document: Any) -> None:
    """Write `document` as JSON to `path` (temporary file + `os.replace`): never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(document, handle)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def save_store_file(
    path: Path, *, file_format: str, version: int, sections: dict[str, Any]
) -> None:
    """Save a store file: `{"format": file_format, "version": version, **sections}`."""
    save_json_atomically(path, {"format": file_format, "version": version, **sections})


def load_store_file(path: Path, *, file_format: str, version: int, name: str) -> Any:
    """The JSON store file at `path`; ValueError unless it has this `format` and `version`.

    `name` says what kind of store it should be (e.g. "Zep emulator store").
    """
    document: Any = json.loads(path.read_text(encoding="utf-8"))
    if (
        not isinstance(document, dict)
        or document.get("format") != file_format
        or document.get("version") != version
    ):
        raise ValueError(
            f"{path} is not a version {version} {name}; move it away or pass another --store path"
        )
    return document


# --- command line ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EmulatorCli(Generic[StateT]):
    """The emulator's command-line options and the state they describe.

    `remote_help` and `store_help` are the help texts of --allow-remote and --store.
    """

    default_port: int
    state_factory: Callable[..., StateT]
    remote_help: str
    store_help: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add --host, --port, --allow-remote, --latency-ms, --error-rate, --seed and --store."""
        parser.add_argument(
            "--host", default=DEFAULT_HOST, help=f"bind address (default {DEFAULT_HOST})"
        )
        parser.add_argument(
            "--port",
            type=int,
            default=self.default_port,
            help=f"port (default {self.default_port})",
        )
        parser.add_argument("--allow-remote", action="store_true", help=self.remote_help)
        parser.add_argument(
            "--latency-ms",
            type=_non_negative_float,
            default=0.0,
            help="delay added to every API request",
        )
        parser.add_argument(
            "--error-rate",
            type=_fraction,
            default=0.0,
            help="fraction (0..1) of API requests answered 500",
        )
        parser.add_argument("--seed", type=int, default=None, help="seed for --error-rate draws")
        parser.add_argument(
            "--store", type=Path, default=None, metavar="PATH", help=self.store_help
        )

    def state_from_options(self, options: Mapping[str, Any]) -> StateT:
        """The state the parsed options describe; absent options keep their defaults."""
        return self.state_factory(
            store_path=options.get("store"),
            latency_ms=options.get("latency_ms") or 0.0,
            error_rate=options.get("error_rate") or 0.0,
            seed=options.get("seed"),
        )


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {raw}")
    return value


def _fraction(raw: str) -> float:
    value = float(raw)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {raw}")
    return value


def run_command(
    options: Mapping[str, Any],
    *,
    run_emulator: Callable[..., None],
    state_from_options: Callable[[Mapping[str, Any]], Any],
) -> None:
    """The body of a `manage.py ..._emulator` command: serve until interrupted.

    A refused host or an unreadable store file becomes a CommandError.
    """
    from django.core.management.base import CommandError

    try:
        run_emulator(
            host=options["host"],
            port=options["port"],
            allow_remote=options["allow_remote"],
            state=state_from_options(options),
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
