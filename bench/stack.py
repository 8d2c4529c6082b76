"""The system under test, as separate processes on loopback: Daphne servers (the product, or the
constant-view baseline), the Foundry emulator and `manage.py foundry_sync` workers.

Each server gets its own SQLite file, a copy of a template that was migrated once (and holds the
benchmark user and its token), so every case starts on a fresh database without paying for
`migrate` each time; on PostgreSQL (`--postgres`), its own database, cloned from a template
database the same way. Servers run production-like: DEBUG=false, a SECRET_KEY, ALLOWED_HOSTS
127.0.0.1, LOG_LEVEL=WARNING, started the way the README says to run Daphne in production.
"""

import json
import os
import secrets
import shutil
import sqlite3
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from bench.procs import (
    LOADGEN_CPU,
    PYTHON,
    ROOT,
    SERVER_CPU,
    Child,
    Processes,
    free_port,
    run_checked,
)

USER = "bench"
FOUNDRY_PROJECT = "bench"
API_VERSION = "2025-05-15-preview"

# Variables of the developer's shell that would change what is measured.
_DROPPED_PREFIXES = ("AZURE_", "FOUNDRY_", "SYNC_", "ZEP_", "CHAT_", "SQLITE_", "DATABASE_")
_DROPPED = {"DJANGO_SETTINGS_MODULE", "REDIS_URL", "USE_FOUNDRY_THREADS", "DEBUG", "LOG_LEVEL"}


def base_env(**overrides: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _DROPPED and not k.startswith(_DROPPED_PREFIXES)
    }
    env.update(
        DEBUG="false",
        SECRET_KEY="bench-" + secrets.token_hex(24),
        ALLOWED_HOSTS="127.0.0.1",
        LOG_LEVEL="WARNING",
        PYTHONDONTWRITEBYTECODE="1",
    )
    env.update(overrides)
    return env


def foundry_env(endpoint: str) -> dict[str, str]:
    return {
        "USE_FOUNDRY_THREADS": "true",
        "AZURE_FOUNDRY_AGENT_ENDPOINT": endpoint,
        "AZURE_FOUNDRY_AGENT_PROJECT": FOUNDRY_PROJECT,
        "AZURE_FOUNDRY_AGENT_KEY": "bench-any-key",
    }


def http_json(method: str, url: str, body: dict | None = None, timeout: float = 10) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    request.add_header("api-key", "bench-any-key")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"{}")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def has_header(url: str, name: str) -> bool:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.headers.get(name) is not None


def _migrate_with_user(env: dict[str, str]) -> str:
    """Migrate the database of `env` and create the benchmark user in it; its API token."""
    run_checked([PYTHON, "manage.py", "migrate", "--noinput"], env)
    return run_checked([PYTHON, "manage.py", "create_api_user", USER], env).strip()


class Databases:
    """SQLite files in the run's temp dir: one migrated template, copied per case."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.template = tmp / "template.sqlite3"
        self.token = ""
        self._count = 0

    def make_template(self) -> None:
        self.token = _migrate_with_user(base_env(SQLITE_PATH=str(self.template)))
        _checkpoint(self.template)

    def fresh(self, name: str) -> Path:
        self._count += 1
        path = self.tmp / f"{self._count:02d}-{name}.sqlite3"
        shutil.copyfile(self.template, path)
        return path

    def copy(self, source: Path, name: str) -> Path:
        _checkpoint(source)
        self._count += 1
        path = self.tmp / f"{self._count:02d}-{name}.sqlite3"
        shutil.copyfile(source, path)
        return path


class PostgresDatabases:
    """Databases on the PostgreSQL server of `url`, whose user may create them: one migrated
    template, cloned per case (CREATE DATABASE ... TEMPLATE); `drop_all()` drops them all."""

    def __init__(self, url: str):
        self.url = url
        self.prefix = f"chat_bench_{secrets.token_hex(4)}"
        self.token = ""
        self.created: list[str] = []

    def max_connections(self) -> int:
        with psycopg.connect(self.url_of("postgres")) as conn:
            return int(conn.execute("SHOW max_connections").fetchone()[0])

    def url_of(self, name: str) -> str:
        return urllib.parse.urlsplit(self.url)._replace(path=f"/{name}").geturl()

    def _create(self, name: str, template: str = "template0") -> str:
        with psycopg.connect(self.url_of("postgres"), autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            )
        self.created.append(name)
        return self.url_of(name)

    def make_template(self) -> None:
        self.token = _migrate_with_user(
            base_env(DATABASE_URL=self._create(f"{self.prefix}_template"))
        )

    def fresh(self, name: str) -> str:
        number = len(self.created)
        clean = "".join(c if c.isalnum() else "_" for c in name.lower())
        return self._create(f"{self.prefix}_{number:02d}_{clean}", f"{self.prefix}_template")

    def drop_all(self) -> None:
        """Drop every database made (PostgreSQL 13+: their connections are ended first); one
        that cannot be dropped is named on stderr and left, the others are still dropped."""
        left = []
        for name in reversed(self.created):
            try:
                with psycopg.connect(self.url_of("postgres"), autocommit=True) as conn:
                    conn.execute(
                        sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                            sql.Identifier(name)
                        )
                    )
            except psycopg.Error as exc:
                print(f"could not drop database {name}: {exc}", file=sys.stderr)
                left.append(name)
        self.created = left


def _checkpoint(path: Path) -> None:
    """Fold the WAL into the main file, so that copying the main file copies everything."""
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


# A pending state wants the session's messages through its newest (SinkState).
_PENDING_SQL = (
    "SELECT COALESCE(SUM({greatest}(s.wanted_seq, c.last_seq) - s.delivered_seq), 0) "
    "FROM sessions_app_sinkstate s JOIN sessions_app_chatsession c ON c.id = s.session_id "
    "WHERE s.wanted_seq > s.delivered_seq"
)


def backlog_pending(db: "Path | str") -> int:
    """Messages the database (a SQLite file, a PostgreSQL URL) still wants delivered to a sink
    (read-only, beside the server)."""
    if isinstance(db, str):
        with psycopg.connect(db) as pg:
            return int(pg.execute(_PENDING_SQL.format(greatest="GREATEST")).fetchone()[0])
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return int(conn.execute(_PENDING_SQL.format(greatest="MAX")).fetchone()[0])
    finally:
        conn.close()


@dataclass
class ServerSpec:
    name: str
    env: dict[str, str] = field(default_factory=dict)  # on top of base_env
    app: str = "chatproject.asgi:application"
    db: "Path | str | None" = None  # a SQLite file, a PostgreSQL URL; None: the baseline


class Server:
    def __init__(self, spec: ServerSpec, child: Child, port: int):
        self.spec = spec
        self.child = child
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.health_path = "/api/v1/health" if spec.app.startswith("chatproject") else "/health"

    @property
    def name(self) -> str:
        return self.spec.name

    def healthy(self) -> bool:
        if not self.child.alive():
            raise RuntimeError(f"server {self.name} exited:\n{self.child.log_tail()}")
        return _healthy(self.url + self.health_path)


def spawn_server(procs: Processes, spec: ServerSpec, cpu: int | str = SERVER_CPU) -> Server:
    port = free_port()
    env = base_env(**spec.env)
    if isinstance(spec.db, str):
        env["DATABASE_URL"] = spec.db
    elif spec.db is not None:
        env["SQLITE_PATH"] = str(spec.db)
    args = [PYTHON, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), spec.app]
    child = procs.spawn(f"server-{spec.name}", args, env, role="server", cpu=cpu)
    return Server(spec, child, port)


def wait_healthy(servers: list["Server"], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    waiting = list(servers)
    while waiting:
        waiting = [s for s in waiting if not s.healthy()]
        if not waiting:
            return
        if time.monotonic() > deadline:
            names = ", ".join(s.name for s in waiting)
            raise RuntimeError(f"servers not healthy after {timeout} s: {names}")
        time.sleep(0.1)


def start_servers(
    procs: Processes, specs: list[ServerSpec], *, start_on_every_cpu: bool = False
) -> list[Server]:
    """Start servers on the server CPU. With `start_on_every_cpu` they start up (imports,
    Django's setup: about 2 s of CPU each) on every CPU and are pinned to the server CPU once
    healthy, so that their start-up does not queue on one CPU (the harness's 16: 35 s before,
    29-32 s with the backlog's preparation beside them, which then takes the longer)."""
    cpus = (
        ",".join(str(c) for c in range(os.cpu_count() or 1)) if start_on_every_cpu else SERVER_CPU
    )
    servers = [spawn_server(procs, spec, cpu=cpus) for spec in specs]
    wait_healthy(servers)
    if start_on_every_cpu:
        for server in servers:
            server.child.pin(SERVER_CPU)
    return servers


class Emulator:
    """`manage.py foundry_emulator` in its own process; its control API drives it."""

    def __init__(self, procs: Processes, name: str = "emulator", latency_ms: float = 0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [
            PYTHON,
            "manage.py",
            "foundry_emulator",
            "--port",
            str(self.port),
            "--latency-ms",
            str(latency_ms),
        ]
        # It stands for Azure, which is not on the server's machine: it runs beside the load
        # generator, so that its CPU is not taken from the servers measured.
        self.child = procs.spawn(name, args, base_env(), role="emulator", cpu=LOADGEN_CPU)

    def wait(self, timeout: float = 60) -> "Emulator":
        deadline = time.monotonic() + timeout
        while not _healthy(self.url + "/_emulator/state"):
            if not self.child.alive():
                raise RuntimeError(f"emulator exited:\n{self.child.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError("emulator did not start")
            time.sleep(0.1)
        return self

    def state(self) -> dict:
        return http_json("GET", self.url + "/_emulator/state")

    def messages(self) -> int:
        return self.state()["store"]["messages"]

    def set_latency(self, latency_ms: float) -> None:
        http_json("POST", self.url + "/_emulator/faults", {"latency_ms": latency_ms})

    def reset(self, *, data: bool) -> None:
        http_json("POST", self.url + "/_emulator/reset" + ("?data=true" if data else ""), {})

    def create_thread(self, messages: list[dict]) -> str:
        """A thread holding `messages`, through the API the SDK uses (one request)."""
        thread = http_json(
            "POST",
            f"{self.url}/api/projects/{FOUNDRY_PROJECT}/threads?api-version={API_VERSION}",
            {"messages": messages, "metadata": {"source": "bench"}},
            timeout=30,
        )
        return thread["id"]

    def thread_url(self, thread_id: str) -> str:
        base = f"{self.url}/api/projects/{FOUNDRY_PROJECT}/threads/{thread_id}"
        return f"{base}?api-version={API_VERSION}"

    def messages_page_url(self, thread_id: str, limit: int = 100) -> str:
        return (
            f"{self.url}/api/projects/{FOUNDRY_PROJECT}/threads/{thread_id}/messages"
            f"?api-version={API_VERSION}&order=asc&limit={limit}"
        )


def spawn_worker(procs: Processes, name: str, db: Path, endpoint: str) -> Child:
    env = base_env(SQLITE_PATH=str(db), SYNC_IN_PROCESS="false", **foundry_env(endpoint))
    return procs.spawn(
        name, [PYTHON, "manage.py", "foundry_sync", "--name", name], env, role="worker"
    )


def task_args(*args: str) -> list[str]:
    return [PYTHON, str(ROOT / "bench" / "tasks.py"), *args]
