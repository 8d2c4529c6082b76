"""Django-side helpers of the benchmark, run in a child process against one SQLite file:

    python bench/tasks.py history  --sessions K --turns 200          (flag off: local history)
    python bench/tasks.py backlog  --sessions 100 --turns 10000      (flag on, no sender running)
    python bench/tasks.py queries  --turns 10                        (queries per chat turn)
    python bench/tasks.py backlog-size
    python bench/tasks.py instructions --requests 100 [--callgrind]  (a chat request's instructions)

The environment picks the database (SQLITE_PATH) and the flag, as for the server. Every command
prints one JSON object on stdout. Turns go through the real service, `sessions_app.services.
chat_turn`, so the rows are exactly what a chat turn writes.
"""

import argparse
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")

import django  # noqa: E402

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from sessions_app.models import ChatMessage, SinkState  # noqa: E402
from sessions_app.services import chat_turn  # noqa: E402
from sessions_app.sinks import active_sinks  # noqa: E402

USER = "bench"


def _user():
    user, _ = get_user_model().objects.get_or_create(username=USER)
    return user


def _turns(*, prefix: str, sessions: int, turns: int, per_commit: int) -> float:
    """`turns` chat turns spread round-robin over `sessions` sessions; returns seconds taken.

    Turns are grouped `per_commit` to a transaction (each turn's own transactions become
    savepoints inside it): the rows are the same, the file is written far fewer times."""
    user = _user()
    started = time.perf_counter()
    done = 0
    while done < turns:
        with transaction.atomic():
            for _ in range(min(per_commit, turns - done)):
                chat_turn(
                    user=user,
                    message=f"benchmark message {done} " + "lorem ipsum " * 4,
                    session_id=f"{prefix}{done % sessions}",
                )
                done += 1
    return time.perf_counter() - started


def cmd_history(args) -> dict:
    elapsed = _turns(
        prefix=args.prefix, sessions=args.sessions, turns=args.sessions * args.turns, per_commit=200
    )
    return {"sessions": [f"{args.prefix}{i}" for i in range(args.sessions)], "seconds": elapsed}


def cmd_backlog(args) -> dict:
    if not any(sink.name == "foundry" for sink in active_sinks()):
        raise SystemExit("backlog: the Foundry sink is not active (flag off or not configured)")
    elapsed = _turns(
        prefix=args.prefix, sessions=args.sessions, turns=args.turns, per_commit=args.per_commit
    )
    return {"turns": args.turns, "seconds": elapsed, **backlog_size()}


def backlog_size() -> dict:
    return {
        "pending_messages": SinkState.objects.pending_messages(),
        "messages": ChatMessage.objects.count(),
        "sink_states": SinkState.objects.count(),
    }


def cmd_backlog_size(args) -> dict:
    return backlog_size()


def cmd_queries(args) -> dict:
    """Queries of each of `turns` turns on one new session (the first turn creates it)."""
    user = _user()
    active = [sink.name for sink in active_sinks()]
    per_turn = []
    for i in range(args.turns):
        with CaptureQueriesContext(connection) as ctx:
            chat_turn(user=user, message=f"query count turn {i}", session_id="queries")
        per_turn.append(len(ctx.captured_queries))
        if i == args.turns - 1:
            last_sql = [q["sql"][:160] for q in ctx.captured_queries]
    steady = sorted(per_turn[1:]) or per_turn
    return {
        "active_sinks": active,
        "per_turn": per_turn,
        "first_turn": per_turn[0],
        "steady_median": steady[len(steady) // 2],
        "steady_max": max(steady),
        "last_turn_sql": last_sql,
    }


def _callgrind_instrument() -> None:
    """Turn callgrind's instrumentation on in this process (started with --instr-atstart=no, so
    that start-up ran at near-native speed). Valgrind takes the command between blocks of guest
    code, so the guest keeps running while it waits instead of blocking in a wait()."""
    control = subprocess.Popen(
        ["callgrind_control", "--instr=on", str(os.getpid())],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while control.poll() is None:
        if time.monotonic() > deadline:
            control.kill()
            raise SystemExit("instructions: callgrind_control did not answer in 60 s")
        sum(range(1000))
    if control.returncode != 0:
        raise SystemExit(f"instructions: callgrind_control failed ({control.returncode})")


def cmd_instructions(args) -> dict:
    """`requests` chat requests through the REST view, in process: Django's test client runs the
    whole request (middleware, token authentication, serializer, view, the turn's transactions)
    without a socket. With --callgrind the process runs under
    `valgrind --tool=callgrind --collect-atstart=no --toggle-collect=functools_reduce`: the
    measured requests run inside one functools.reduce call, so that only they are counted (not
    the start-up, the warm-up, nor the wait for callgrind_control)."""
    from django.test import Client
    from rest_framework.authtoken.models import Token

    token, _ = Token.objects.get_or_create(user=_user())
    client = Client(HTTP_AUTHORIZATION=f"Token {token.key}", SERVER_NAME="127.0.0.1")

    def request(_, i: int) -> None:
        response = client.post(
            "/api/v1/chat",
            {"message": f"instruction count {i}", "session_id": f"instr-{i % args.sessions}"},
            content_type="application/json",
        )
        if response.status_code != 200:
            raise SystemExit(f"instructions: HTTP {response.status_code}: {response.content!r}")

    for i in range(args.warmup):
        request(None, i)
    if args.callgrind:
        _callgrind_instrument()
    first = args.warmup
    functools.reduce(request, range(first, first + args.requests), None)
    return {
        "requests": args.requests,
        "warmup": args.warmup,
        "sessions": args.sessions,
        "active_sinks": [sink.name for sink in active_sinks()],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("history")
    p.add_argument("--sessions", type=int, default=1)
    p.add_argument("--turns", type=int, default=200)
    p.add_argument("--prefix", default="cold-")
    p = sub.add_parser("backlog")
    p.add_argument("--sessions", type=int, default=100)
    p.add_argument("--turns", type=int, default=10_000)
    p.add_argument("--per-commit", type=int, default=200)
    p.add_argument("--prefix", default="backlog-")
    sub.add_parser("backlog-size")
    p = sub.add_parser("queries")
    p.add_argument("--turns", type=int, default=10)
    p = sub.add_parser("instructions")
    p.add_argument("--requests", type=int, default=100)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--sessions", type=int, default=8)
    p.add_argument("--callgrind", action="store_true")
    args = parser.parse_args()
    handler = {
        "history": cmd_history,
        "backlog": cmd_backlog,
        "backlog-size": cmd_backlog_size,
        "queries": cmd_queries,
        "instructions": cmd_instructions,
    }[args.cmd]
    print(json.dumps(handler(args)))


if __name__ == "__main__":
    main()
