"""Benchmark harness of the chat backend: what the Foundry flag, the sinks and the stack cost,
measured side by side in one run so that ratios hold on a noisy machine.

    .venv/bin/python bench/run.py [--quick] [--rounds N] [--seconds S] [--out FILE.json]
    .venv/bin/python bench/run.py --postgres postgres://postgres@127.0.0.1:5432/postgres

It starts the real server (Daphne, `chatproject.asgi:application`), sync workers and a
constant-view baseline as separate processes on 127.0.0.1, pinned to CPU 1 (`taskset -c 1`), and
drives them from this process, pinned to CPU 0, with closed-loop keep-alive clients. The Foundry
emulator stands for Azure, which is not on the server's machine: it runs on CPU 0 too. REST and
WebSocket cases are interleaved in rotated rounds, with medians over rounds, an A/A pair for the
noise floor, and a drain after every case that leaves work for the emulator. Then the flag's
servers at 8 and at 32 clients are loaded at the same time, side by side on one CPU, for ratios
that the machine's changes of speed cannot move apart. Figures are medians; compare cases only
by their ratios.

Cases:
  1-2. REST chat at 1/8/32 clients: flag off; flag on with the emulator at 150 ms; flag on with
       the emulator down (a closed port); ratios against flag off. At 8 clients also flag on
       with no sender in the server (SYNC_IN_PROCESS=false, as in the Procfile): what the flag
       costs the turns themselves, apart from the sender's work on the same CPU. At 32 clients
       the flag's servers are measured side by side only.
  3.   WebSocket: N sockets sending turns closed-loop (turns/s, first chunk, reply).
  4.   Cold start: first reply on a 200-turn session after a server restart (local history), and
       on a session pointed at a 400-message Foundry thread (the first turn reads its newest
       page from the emulator; the server's sender imports the whole thread in the background).
  5.   Sync throughput from a backlog with 1 and 4 `manage.py foundry_sync` workers; queries per
       chat turn (flag off and on); CPU instructions per chat request, flag off and on, counted
       under valgrind's callgrind where it is installed: the flag's cost on the response path
       as a figure that repeats to within a fraction of a percent, whatever else the machine
       does.
  6.   Baseline: a bare Daphne + Django constant view under the same load; peak memory per
       process.

`--postgres URL` runs the side-by-side phase alone, each server on a PostgreSQL database of its
own on that server (created for the run, dropped after it).

`--quick` is the CI smoke test: tiny durations, one round, a small backlog, few sockets; it exits
0 when every case ran (it never checks a time). Every process it starts is stopped at the end, on
an error or on Ctrl-C.
"""

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import loadgen, stack
from bench.procs import (
    LOADGEN_CPU,
    ROOT,
    SERVER_CPU,
    Child,
    Processes,
    cpu_seconds,
    cpu_seconds_fine,
    free_port,
    run_checked,
)
from bench.stack import PYTHON, Emulator, Server, ServerSpec

FOUNDRY_LATENCY_MS = 150
TARGET_FLAG_RATIO = 0.10  # flag on: p50, p99 and req/s within 10% of flag off
TARGET_BASELINE_FRACTION = 0.50  # flag-off chat req/s >= 50% of the constant view's
TARGET_COLD_MS = 200
WARM_UP_S = 1.0  # side by side: an unmeasured load before the rounds
STALL_S = 3.0  # a drain ends when the emulator's message count has not grown for this long


@dataclass
class Config:
    rounds: int = 3
    seconds: float = 2.0
    warmup: float = 0.2
    settle: float = 0.1  # pause between cases
    clients: tuple[int, ...] = (1, 8, 32)
    aa_clients: int = 8
    # Side by side: at each of `together_clients`, each round loads every server for
    # `together_seconds`; percentiles are taken over all the rounds' answers (a round gives
    # each server about 400). At the other loads than aa_clients the flag's servers are
    # measured side by side only (one after another, their ratios were noise).
    together_clients: tuple[int, ...] = (8, 32)
    together_rounds: int = 4
    together_seconds: float = 4.0
    sockets: int = 100
    cold_reps: int = 4
    # (emulator latency in ms, repetitions)
    cold_foundry: tuple[tuple[int, int], ...] = ((FOUNDRY_LATENCY_MS, 2), (0, 2))
    history_turns: int = 200
    backlog_turns: int = 10_000
    backlog_sessions: int = 100
    sync_workers: tuple[int, ...] = (1, 4)
    sync_seconds: float = 5.0
    drain_timeout: float = 30.0
    rtt_samples: int = 20
    query_turns: int = 8
    instruction_requests: int = 60

    @classmethod
    def quick(cls) -> "Config":
        return cls(
            rounds=1,
            seconds=0.6,
            warmup=0.2,
            settle=0.05,
            clients=(8,),
            together_clients=(8,),
            together_rounds=1,
            together_seconds=0.6,
            sockets=10,
            cold_reps=1,
            cold_foundry=((FOUNDRY_LATENCY_MS, 1),),
            backlog_turns=300,
            backlog_sessions=10,
            sync_seconds=4.0,
            drain_timeout=15.0,
            rtt_samples=5,
            query_turns=4,
            instruction_requests=10,
        )


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


# ---- cases of the interleaved rounds ---------------------------------------------------------


@dataclass
class Case:
    key: str
    label: str
    kind: str  # rest | ws
    config: str  # off | on | down | on-nosender | baseline | baseline-mw | off-twin
    clients: int
    server: Server | None = None
    emulator: Emulator | None = None  # set: drain into it after the case
    rounds: list[dict] = field(default_factory=list)
    sequential: bool = True  # False: measured side by side only

    def spec(self, dbs: stack.Databases, emulator_url: str, down_url: str) -> ServerSpec:
        if self.config == "baseline":
            return ServerSpec(self.key, app="bench.baseline.asgi:application")
        if self.config == "baseline-mw":
            return ServerSpec(
                self.key,
                app="bench.baseline.asgi:application",
                env={"BENCH_BASELINE_MIDDLEWARE": "product"},
            )
        env = {}
        if self.config == "on":
            env = stack.foundry_env(emulator_url)
        elif self.config == "down":
            env = stack.foundry_env(down_url)
        elif self.config == "on-nosender":
            # The turns' own cost of the flag, without the sender's work on the same CPU: the
            # layout of the Procfile, whose sender runs in worker processes (none here).
            env = {**stack.foundry_env(emulator_url), "SYNC_IN_PROCESS": "false"}
        return ServerSpec(self.key, env=env, db=dbs.fresh(self.key))


def build_cases(cfg: Config) -> list[Case]:
    cases = []
    on_label = f"flag on, Foundry {FOUNDRY_LATENCY_MS} ms"
    down_label = "flag on, Foundry down"
    for clients in cfg.clients:
        alone = clients == cfg.aa_clients or clients not in cfg.together_clients
        cases += [
            Case(f"off-{clients}", "flag off", "rest", "off", clients),
            Case(f"on-{clients}", on_label, "rest", "on", clients, sequential=alone),
            Case(f"down-{clients}", down_label, "rest", "down", clients, sequential=alone),
            Case(f"base-{clients}", "baseline constant view", "rest", "baseline", clients),
        ]
    for clients in cfg.together_clients:
        alone = clients == cfg.aa_clients
        if not alone:
            cases.append(
                Case(f"ref-{clients}", "flag off", "rest", "off", clients, sequential=False)
            )
        cases += [
            Case(
                f"twin-{clients}",
                "flag off (A/A twin)",
                "rest",
                "off-twin",
                clients,
                sequential=alone,
            ),
            Case(
                f"nosender-{clients}",
                "flag on, no sender in server",
                "rest",
                "on-nosender",
                clients,
                sequential=alone,
            ),
        ]
    cases.append(
        Case(
            f"basemw-{cfg.aa_clients}",
            "constant view + product mw",
            "rest",
            "baseline-mw",
            cfg.aa_clients,
        )
    )
    cases.append(Case("ws", "WebSocket, flag off", "ws", "off", cfg.sockets))
    return cases


def round_order(cases: list[Case], round_index: int, rounds: int) -> list[Case]:
    """Round r runs the cases rotated by r * step: every case moves through the positions of a
    round, so no case always runs first (or last, or right after the same neighbour)."""
    step = max(1, len(cases) // max(rounds, 1))
    shift = (round_index * step) % len(cases)
    return cases[shift:] + cases[:shift]


async def run_case(case: Case, cfg: Config, token: str) -> dict:
    server = case.server
    assert server is not None
    if case.kind == "ws":
        return await loadgen.websocket_chat(
            base_url=server.url,
            token=token,
            sockets=case.clients,
            seconds=cfg.seconds,
            warmup=cfg.warmup,
            session_prefix="ws-",
        )
    return await loadgen.rest_chat(
        url=server.url + "/api/v1/chat",
        token=token,
        clients=case.clients,
        seconds=cfg.seconds,
        warmup=cfg.warmup,
        session_prefix=f"{case.key}-client-",
    )


def drain(case: Case, cfg: Config) -> dict:
    """Wait until the case's server has delivered its backlog to the emulator (its database has
    nothing pending and the emulator's message count has stopped growing). The emulator answers
    without latency meanwhile, so the drain takes seconds, not minutes; it is put back after."""
    emulator, db = case.emulator, case.server.spec.db
    pending_at_end = stack.backlog_pending(db)
    began = time.monotonic()
    emulator.set_latency(0)
    stalled = False
    try:
        last, stable_since = emulator.messages(), time.monotonic()
        while time.monotonic() - began < cfg.drain_timeout:
            time.sleep(0.1)
            now_count = emulator.messages()
            if now_count != last:
                last, stable_since = now_count, time.monotonic()
            pending = stack.backlog_pending(db)
            if pending == 0 and time.monotonic() - stable_since >= 0.2:
                break
            if time.monotonic() - stable_since >= STALL_S:  # stopped growing: backing off
                stalled = True
                break
    finally:
        emulator.set_latency(FOUNDRY_LATENCY_MS)
    pending = stack.backlog_pending(db)
    return {
        "pending_at_end": pending_at_end,
        "drain_s": round(time.monotonic() - began, 2),
        "left_after_drain": pending,
        "stalled": stalled,
    }


def run_rounds(cases: list[Case], cfg: Config, token: str, procs: Processes) -> None:
    servers = [c.server.child for c in cases]
    for child in servers:
        child.pause()
    for r in range(cfg.rounds):
        order = round_order(cases, r, cfg.rounds)
        log(f"round {r + 1}/{cfg.rounds}: " + " ".join(c.key for c in order))
        for case in order:
            case_began = time.monotonic()
            child = case.server.child
            child.resume()
            time.sleep(cfg.settle)
            cpu_before, wall_before = cpu_seconds(child.pid), time.perf_counter()
            result = asyncio.run(run_case(case, cfg, token))
            cpu_after, wall_after = cpu_seconds(child.pid), time.perf_counter()
            if cpu_before is not None and cpu_after is not None:
                result["server_cpu_util"] = round(
                    (cpu_after - cpu_before) / (wall_after - wall_before), 2
                )
            result["round"] = r + 1
            if case.emulator is not None:
                result["drain"] = drain(case, cfg)
            elif case.config in ("down", "on-nosender"):
                result["pending_at_end"] = stack.backlog_pending(case.server.spec.db)
            result["quiesce_s"] = round(child.quiesce(), 2)
            child.sample_memory()
            child.pause()
            result["wall_s"] = round(time.monotonic() - case_began, 2)
            case.rounds.append(result)
    for child in servers:
        child.resume()


# ---- side by side ----------------------------------------------------------------------------

# The configurations loaded at once, at each of cfg.together_clients; the first is the reference.
SIDE_BY_SIDE = ("off", "twin", "on", "down", "nosender")


def side_by_side_keys(cfg: Config, clients: int) -> list[str]:
    """The servers loaded at once at `clients`. Where the flag's servers are measured side by
    side only, flag off is a server of its own too (`ref`): like them, it has served nothing
    before (the one of the sequential cases has), so the ratios compare like with like."""
    reference = "off" if clients == cfg.aa_clients else "ref"
    return [f"{reference if name == 'off' else name}-{clients}" for name in SIDE_BY_SIDE]


def side_by_side(cases: list[Case], cfg: Config, token: str, clients: int) -> dict:
    """The flag's servers and flag off (twice: the A/A pair), loaded at the same time on the
    same CPU, `cfg.together_rounds` times. Whatever slows the machine down at a moment slows
    them all alike, so their ratios hold far tighter than those of cases run one after
    another: the CPU time per request, and req/s, p50 and p99 under an equal share of the CPU.

    The flag-on server's backlog is drained after the last round only: its sender works on it
    at its share of the CPU throughout, as in a server that stays saturated."""
    by_key = {c.key: c for c in cases}
    chosen = [by_key[key] for key in side_by_side_keys(cfg, clients)]
    others = [c.server.child for c in cases if c not in chosen]
    for child in others:
        child.pause()
    rounds = []
    try:
        # Unmeasured: the first connections, the sinks' warm-up and the pools' growth, which
        # servers measured one after another before have been through and the others not.
        log(f"side by side, warming up: {' '.join(c.key for c in chosen)}")
        asyncio.run(_load_together(chosen, cfg, token, f"warm{clients}", seconds=WARM_UP_S))
        for r in range(cfg.together_rounds):
            log(
                f"side by side, round {r + 1}/{cfg.together_rounds}: "
                + " ".join(c.key for c in chosen)
            )
            results = asyncio.run(_load_together(chosen, cfg, token, f"sbs{clients}-{r}"))
            for case in chosen:
                if case.emulator is not None:
                    results[case.key]["pending_at_end"] = stack.backlog_pending(case.server.spec.db)
                else:
                    case.server.child.quiesce()
            rounds.append(results)
        # Once, at the end: the server then stops with no call to the emulator in flight.
        drains = {c.key: drain(c, cfg) for c in chosen if c.emulator is not None}
    finally:
        for child in others:
            child.resume()
    return {**summarize_side_by_side(chosen, rounds, clients), "drains": drains}


async def _load_together(
    cases: list[Case], cfg: Config, token: str, tag: str, seconds: float | None = None
) -> dict:
    seconds = cfg.together_seconds if seconds is None else seconds
    cpu: dict[str, list] = {}

    async def read_cpu(name: str, after: float) -> None:
        await asyncio.sleep(after)
        cpu[name] = [cpu_seconds_fine(c.server.child.pid) for c in cases]

    results = await asyncio.gather(
        *(
            loadgen.rest_chat(
                url=c.server.url + "/api/v1/chat",
                token=token,
                clients=c.clients,
                seconds=seconds,
                warmup=cfg.warmup,
                session_prefix=f"{tag}-{c.key}-client-",
                keep_latencies=True,
            )
            for c in cases
        ),
        read_cpu("start", cfg.warmup),
        read_cpu("end", cfg.warmup + seconds),
    )
    out = {}
    for i, case in enumerate(cases):
        result = results[i]
        before, after = cpu["start"][i], cpu["end"][i]
        used = after - before if before is not None and after is not None else None
        done = result["completed"]
        # (None if a thread ended in the window and took its CPU time with it: rare, in a pool)
        ok = used is not None and used > 0 and done
        result["cpu_ms_per_request"] = round(1000 * used / done, 3) if ok else None
        result["server_cpu_util"] = round(used / seconds, 2) if used is not None else None
        out[case.key] = result
    return out


def summarize_side_by_side(cases: list[Case], rounds: list[dict], clients: int) -> dict:
    """Per case: req/s and CPU per request as the median of their ratios to the reference
    within each round (the pairing is the point); p50 and p99 over every answer of every
    round, pooled, against the reference's pooled the same way. A round's p99 rests on its
    one or two slowest answers, and the ratio of two such was seen to move by 16% between
    flag off and its twin."""
    reference = cases[0].key
    fields_ = ("rps", "cpu_ms_per_request")
    pooled = {
        case.key: sorted(v for r in rounds for v in r[case.key].pop("latencies_ms"))
        for case in cases
    }
    out = {"clients": clients, "rounds": rounds, "cases": []}
    for case in cases:
        mine = [r[case.key] for r in rounds]
        latencies = pooled[case.key]
        row = {
            "case": case.key,
            "label": case.label,
            **{name: median([m.get(name) for m in mine]) for name in fields_},
            "p50_ms": loadgen.percentile(latencies, 50),
            "p99_ms": loadgen.percentile(latencies, 99),
            "server_cpu_util": median([m.get("server_cpu_util") for m in mine]),
            "errors": sum(m["errors"] for m in mine),
            "requests": sum(m["requests"] for m in mine),
        }
        if case.key != reference:
            per_round = {
                name: [ratio(r[case.key].get(name), r[reference].get(name)) for r in rounds]
                for name in fields_
            }
            for name in fields_:
                row[f"{name}_ratio"] = median(per_round[name])
            for name in ("p50_ms", "p99_ms"):
                row[f"{name}_ratio"] = ratio(row[name], out["cases"][0][name])
            cpu_ratios = [v for v in per_round["cpu_ms_per_request"] if v is not None]
            row["cpu_ratio_range"] = [min(cpu_ratios), max(cpu_ratios)] if cpu_ratios else None
            if case.config != "off-twin":  # the twin is the noise, not a flag case
                row["within_target"] = within_flag_target(
                    row["rps_ratio"], row["p50_ms_ratio"], row["p99_ms_ratio"]
                )
        if case.emulator is not None:
            row["pending_at_end_median"] = median([m["pending_at_end"] for m in mine])
        out["cases"].append(row)
    return out


def summarize_case(case: Case) -> dict:
    fields_ = (
        ("rps", "p50_ms", "p95_ms", "p99_ms", "server_cpu_util")
        if case.kind == "rest"
        else (
            "turns_per_s",
            "first_chunk_p50_ms",
            "first_chunk_p95_ms",
            "first_chunk_p99_ms",
            "reply_p50_ms",
            "reply_p95_ms",
            "reply_p99_ms",
            "server_cpu_util",
        )
    )
    out = {
        "label": case.label,
        "kind": case.kind,
        "config": case.config,
        "clients": case.clients,
        **{name: median([r.get(name) for r in case.rounds]) for name in fields_},
        "errors": sum(r["errors"] for r in case.rounds),
        "requests": sum(r.get("requests", r.get("turns", 0)) for r in case.rounds),
        "rounds": case.rounds,
    }
    if case.emulator is not None:
        out["drain_s_median"] = median([r["drain"]["drain_s"] for r in case.rounds])
        out["pending_at_end_median"] = median([r["drain"]["pending_at_end"] for r in case.rounds])
        out["left_after_drain_max"] = max(r["drain"]["left_after_drain"] for r in case.rounds)
    return out


def within_flag_target(rps_ratio, p50_ratio, p99_ratio) -> bool:
    """Flag on against flag off: req/s, p50 and p99 all within TARGET_FLAG_RATIO."""
    if None in (rps_ratio, p50_ratio, p99_ratio):
        return False
    return (
        rps_ratio >= 1 - TARGET_FLAG_RATIO
        and p50_ratio <= 1 + TARGET_FLAG_RATIO
        and p99_ratio <= 1 + TARGET_FLAG_RATIO
    )


def compare(summary: dict, cfg: Config) -> dict:
    out = {"flag": [], "baseline": [], "aa": None}
    for clients in cfg.clients:
        off = summary[f"off-{clients}"]
        others = [f"on-{clients}", f"down-{clients}"]
        if clients == cfg.aa_clients:
            others.append(f"nosender-{clients}")
        for other in others:
            s = summary.get(other)
            if s is None:  # measured side by side only
                continue
            row = {
                "case": other,
                "clients": clients,
                "rps_ratio": ratio(s["rps"], off["rps"]),
                "p50_ratio": ratio(s["p50_ms"], off["p50_ms"]),
                "p99_ratio": ratio(s["p99_ms"], off["p99_ms"]),
            }
            row["within_target"] = within_flag_target(
                row["rps_ratio"], row["p50_ratio"], row["p99_ratio"]
            )
            out["flag"].append(row)
        base = summary[f"base-{clients}"]
        fraction = ratio(off["rps"], base["rps"])
        out["baseline"].append(
            {
                "clients": clients,
                "chat_rps": off["rps"],
                "baseline_rps": base["rps"],
                "fraction": fraction,
                "within_target": fraction is not None and fraction >= TARGET_BASELINE_FRACTION,
            }
        )
    off, mw = summary[f"off-{cfg.aa_clients}"], summary[f"basemw-{cfg.aa_clients}"]
    out["middleware"] = {
        "clients": cfg.aa_clients,
        "baseline_mw_rps": mw["rps"],
        "baseline_mw_vs_bare": ratio(mw["rps"], summary[f"base-{cfg.aa_clients}"]["rps"]),
        "chat_vs_baseline_mw": ratio(off["rps"], mw["rps"]),
    }
    a, b = summary[f"off-{cfg.aa_clients}"], summary[f"twin-{cfg.aa_clients}"]
    aa = {k: ratio(b[k], a[k]) for k in ("rps", "p50_ms", "p95_ms", "p99_ms")}
    aa["noise_floor"] = (
        round(max(abs(1 - v) for v in aa.values() if v is not None), 3)
        if any(v is not None for v in aa.values())
        else None
    )
    out["aa"] = aa
    return out


# ---- cold start ------------------------------------------------------------------------------


def first_turns(server: Server, token: str, session_id: str, after_cold=None) -> dict:
    """The first chat turn on `session_id` after the server started, then a second (warm) one;
    `after_cold()` runs between the two."""
    url = server.url + "/api/v1/chat"
    cold_s, status, body = asyncio.run(
        loadgen.single_post(url, token, {"message": "cold start turn", "session_id": session_id})
    )
    if after_cold is not None:
        after_cold()
    warm_s, warm_status, _ = asyncio.run(
        loadgen.single_post(url, token, {"message": "warm turn", "session_id": session_id})
    )
    reply = (body or {}).get("reply", "")
    return {
        "cold_ms": round(cold_s * 1000, 2),
        "warm_ms": round(warm_s * 1000, 2),
        "status": status,
        "warm_status": warm_status,
        "reply": reply,
    }


def cold_start_local(procs: Processes, cfg: Config, db: Path, token: str) -> dict:
    reps = []
    spec = ServerSpec("cold-local", db=db)
    for rep in range(cfg.cold_reps):
        server = stack.start_servers(procs, [spec])[0]
        try:
            result = first_turns(server, token, f"cold-{rep}")
        finally:
            procs.stop(server.child)
        result["history_loaded"] = result["reply"].startswith(f"Turn {cfg.history_turns + 1}:")
        reps.append(result)
    return _cold_summary(reps)


def _cold_summary(reps: list[dict]) -> dict:
    ok = [r for r in reps if r["status"] == 200]
    return {
        "cold_ms_median": median([r["cold_ms"] for r in ok]),
        "warm_ms_median": median([r["warm_ms"] for r in ok]),
        "errors": len(reps) - len(ok),
        "all_loaded": all(r["history_loaded"] for r in reps),
        "reps": reps,
    }


def history_messages(turns: int) -> list[dict]:
    messages = []
    for turn in range(1, turns + 1):
        said = f"message {turn} of an earlier conversation " + "lorem ipsum " * 4
        messages.append({"role": "user", "content": said})
        messages.append({"role": "assistant", "content": f'Turn {turn}: you said "{said}".'})
    return messages


def cold_start_foundry(
    procs: Processes,
    cfg: Config,
    dbs: stack.Databases,
    emulator: Emulator,
    latency_ms: int,
    reps: int,
) -> dict:
    """A session pointed (`manage.py foundry_import_thread`) at a thread of 2 x history_turns
    messages on a fresh database; the first turn reads its newest page from the emulator, and
    the server's sender imports the whole thread."""
    emulator.set_latency(0)
    threads = [emulator.create_thread(history_messages(cfg.history_turns)) for _ in range(reps)]
    emulator.set_latency(latency_ms)
    env = stack.foundry_env(emulator.url)
    probe = threads[0]
    rtt = asyncio.run(loadgen.round_trips(emulator.thread_url(probe), cfg.rtt_samples))
    page = asyncio.run(
        loadgen.round_trips(emulator.messages_page_url(probe), max(3, cfg.rtt_samples // 4))
    )
    reps = []
    for rep, thread_id in enumerate(threads):
        db = dbs.fresh(f"cold-foundry-{latency_ms}-{rep}")
        task_env = stack.base_env(SQLITE_PATH=str(db), **env)
        run_checked(
            [PYTHON, "manage.py", "foundry_import_thread", stack.USER, "cold-f", thread_id],
            task_env,
            cpu=LOADGEN_CPU,
        )
        spec = ServerSpec(f"cold-foundry-{latency_ms}", env=env, db=db)
        server = stack.start_servers(procs, [spec])[0]
        before = emulator.state()["requests"]["by_route"]
        calls: dict[str, int] = {}

        def count_reads(before: dict = before, calls: dict = calls) -> None:
            # Reads only: the sender may already be appending the turn's two new messages.
            after = emulator.state()["requests"]["by_route"]
            calls.update(
                {
                    route: n - before.get(route, 0)
                    for route, n in after.items()
                    if route.startswith("GET") and n != before.get(route, 0)
                }
            )

        try:
            result = first_turns(server, dbs.token, "cold-f", after_cold=count_reads)
            # The server's sender reads the rest of the thread in the background.
            result["imported_after_s"] = wait_for_messages(
                server, dbs.token, "cold-f", 2 * cfg.history_turns + 4
            )
        finally:
            procs.stop(server.child)
        result["emulator_reads"] = calls
        # The first turn read only the newest page: its reply reflects the newest old message.
        newest = history_messages(cfg.history_turns)[-2]["content"]
        result["history_loaded"] = (
            f'Earlier you said "{newest}' in result["reply"]
            and result["imported_after_s"] is not None
        )
        reps.append(result)
    emulator.set_latency(FOUNDRY_LATENCY_MS)
    out = _cold_summary(reps)
    out.update(
        latency_ms=latency_ms,
        thread_messages=2 * cfg.history_turns,
        emulator_rtt_ms_median=round(median(rtt) * 1000, 2),
        emulator_page100_rtt_ms_median=round(median(page) * 1000, 2),
    )
    out["target_ms"] = round(TARGET_COLD_MS + out["emulator_rtt_ms_median"], 1)
    out["emulator_reads_per_cold_turn"] = median([sum(r["emulator_reads"].values()) for r in reps])
    imported = [r["imported_after_s"] for r in reps if r["imported_after_s"] is not None]
    out["imported_after_ms_median"] = round(median(imported) * 1000, 1) if imported else None
    return out


def wait_for_messages(server: Server, token: str, session_id: str, count: int) -> float | None:
    """Seconds until the session holds `count` messages (None: not within 30 s)."""
    request = urllib.request.Request(
        f"{server.url}/api/v1/sessions/{session_id}", headers={"Authorization": f"Token {token}"}
    )
    began = time.monotonic()
    while time.monotonic() - began < 30:
        with urllib.request.urlopen(request, timeout=10) as response:
            if json.loads(response.read())["message_count"] >= count:
                return time.monotonic() - began
        time.sleep(0.02)
    return None


# ---- sync throughput -------------------------------------------------------------------------


def sync_throughput(
    procs: Processes,
    cfg: Config,
    dbs: stack.Databases,
    backlog_db: Path,
    backlog: dict,
    emulator: Emulator,
) -> list[dict]:
    expected = backlog["pending_messages"]
    results = []
    for workers in cfg.sync_workers:
        db = dbs.copy(backlog_db, f"sync-{workers}w")
        emulator.reset(data=True)
        emulator.set_latency(0)
        started = time.monotonic()
        children = [
            stack.spawn_worker(procs, f"worker-{workers}w-{i}", db, emulator.url)
            for i in range(workers)
        ]
        first_at = first_count = None
        count = 0
        samples = []
        deadline = started + cfg.sync_seconds + 30  # the window starts at the first delivery
        try:
            while time.monotonic() < deadline:
                time.sleep(0.25)
                for c in children:
                    if not c.alive():
                        raise RuntimeError(f"{c.name} exited:\n{c.log_tail()}")
                    c.sample_memory()
                count = emulator.messages()
                now = time.monotonic()
                samples.append((round(now - started, 2), count))
                if first_at is None and count > 0:
                    first_at, first_count = now, count
                    deadline = min(deadline, now + cfg.sync_seconds)
                if count >= expected:
                    break
        finally:
            procs.stop_many(children, timeout=3)  # past the window: a kill loses nothing
        end = samples[-1][0] + started if samples else time.monotonic()
        window = end - first_at if first_at else None
        state = emulator.state()
        results.append(
            {
                "workers": workers,
                "backlog_messages": expected,
                "delivered": count,
                "complete": count >= expected,
                "threads_created": state["store"]["threads"],
                "first_delivery_after_s": round(first_at - started, 2) if first_at else None,
                "window_s": round(window, 2) if window else None,
                "messages_per_s": round((count - first_count) / window, 1) if window else None,
                "emulator_requests": state["requests"]["total"],
                "emulator_status": state["requests"]["by_status"],
                "worker_peak_rss_mib": [
                    round(c.peak_rss_kib / 1024, 1) if c.peak_rss_kib else None for c in children
                ],
                "samples": samples,
            }
        )
    emulator.set_latency(FOUNDRY_LATENCY_MS)
    return results


# ---- instructions per request -----------------------------------------------------------------

# The measured requests run inside one call of this C function (bench/tasks.py), the only code
# that callgrind counts; it needs an interpreter with its symbols (not a stripped binary).
COUNTED_FUNCTION = "functools_reduce"


def instruction_counts(
    procs: Processes, cfg: Config, dbs: stack.Databases, on_env: dict, tmp: Path
) -> dict:
    """Instructions per chat request with the flag off and on (`on_env`: no sender in the
    process, the turns' own cost), both runs at once, one per CPU. Instructions leave out what
    the kernel does (writing the WAL), so they complement the timed cases; they do not replace
    them."""
    valgrind, control = shutil.which("valgrind"), shutil.which("callgrind_control")
    if not valgrind or not control:
        return {"skipped": "valgrind (with callgrind_control) is not installed"}
    runs = {}
    for flag, cpu in (("off", LOADGEN_CPU), ("on", SERVER_CPU)):
        env = stack.base_env(
            **{
                "SQLITE_PATH": str(dbs.fresh(f"instructions-{flag}")),
                "SYNC_IN_PROCESS": "false",
                "SINK_WARM_UP": "false",
                **(on_env if flag == "on" else {}),
            }
        )
        valgrind_log = tmp / f"callgrind-{flag}.log"
        callgrind = [
            valgrind,
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            f"--log-file={valgrind_log}",
            "--instr-atstart=no",  # start-up at near-native speed
            "--collect-atstart=no",
            f"--toggle-collect={COUNTED_FUNCTION}",
        ]
        args = ["instructions", "--requests", str(cfg.instruction_requests), "--callgrind"]
        child, out = spawn_task(
            procs, f"task-instructions-{flag}", args, env, tmp, cpu=cpu, under=callgrind
        )
        runs[flag] = (child, out, valgrind_log)
    result: dict = {"requests": cfg.instruction_requests, "counted_function": COUNTED_FUNCTION}
    for flag, (child, out, valgrind_log) in runs.items():
        task = finish_task(procs, child, out, timeout=600)
        found = re.search(r"Collected : ([\d,]+)", valgrind_log.read_text())
        total = int(found.group(1).replace(",", "")) if found else 0
        if not total:
            return {"skipped": f"callgrind counted nothing in {COUNTED_FUNCTION} (no symbols?)"}
        result[flag] = {
            "active_sinks": task["active_sinks"],
            "per_request": round(total / cfg.instruction_requests),
        }
    result["ratio"] = ratio(result["on"]["per_request"], result["off"]["per_request"])
    return result


# ---- the table -------------------------------------------------------------------------------


def fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def verdict(ok: bool | None) -> str:
    return "ok" if ok else "MISS"


def table(headers: list[str], rows: list[list], indent: str = "  ") -> list[str]:
    """Columns sized to fit; the first column left-aligned, the others right-aligned."""
    cells = [[str(c) for c in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        first = row[0].ljust(widths[0])
        rest = "  ".join(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))
        return (indent + first + "  " + rest).rstrip()

    out = [line(cells[0]), indent + "-" * (sum(widths) + 2 * (len(widths) - 1))]
    return out + [line(row) for row in cells[1:]]


def _rest_rows(report: dict) -> list[list]:
    cfg, summary = report["config"], report["cases"]
    keys = []
    for clients in cfg["clients"]:
        keys += [f"off-{clients}", f"on-{clients}", f"down-{clients}", f"base-{clients}"]
        if clients == cfg["aa_clients"]:
            keys += [f"twin-{clients}", f"basemw-{clients}", f"nosender-{clients}"]
    rows = []
    for key in keys:
        s = summary.get(key)
        if s is None:  # measured side by side only
            continue
        rows.append(
            [
                s["label"],
                s["clients"],
                fmt(s["rps"]),
                fmt(s["p50_ms"]),
                fmt(s["p95_ms"]),
                fmt(s["p99_ms"]),
                s["errors"],
                fmt(s["server_cpu_util"], 2),
            ]
        )
    return rows


def _side_by_side_lines(together: dict) -> list[str]:
    lines = [
        f"Side by side: these servers loaded at once on CPU {SERVER_CPU}, "
        f"{together['clients']} clients each, {len(together['rounds'])} round(s); req/s and "
        "CPU: medians of the ratios to flag off within each round; p50 and p99: over every "
        "round's answers",
        f"  (target: req/s >= {1 - TARGET_FLAG_RATIO:.2f}, p50 and p99 <= "
        f"{1 + TARGET_FLAG_RATIO:.2f}; the A/A twin shows the noise left)",
    ]
    rows = []
    for row in together["cases"]:
        spread = row.get("cpu_ratio_range")
        rows.append(
            [
                row["label"],
                fmt(row["rps"]),
                fmt(row["cpu_ms_per_request"], 3),
                fmt(row.get("cpu_ms_per_request_ratio"), 3),
                f"{spread[0]:.3f}-{spread[1]:.3f}" if spread else "-",
                fmt(row.get("rps_ratio"), 3),
                fmt(row.get("p50_ms_ratio"), 3),
                fmt(row.get("p99_ms_ratio"), 3),
                verdict(row["within_target"]) if "within_target" in row else "",
            ]
        )
    lines += table(
        ["case", "req/s", "CPU ms/req", "CPU/req", "range", "req/s", "p50", "p99", "target"],
        rows,
    )
    lines += [
        "  CPU ms/req: the server's CPU time per answered request, its own and its sender's;",
        "  the in-process sender is paced to the CPU left idle, but never below",
        "  SYNC_IN_PROCESS_CPU_SHARE of the CPU its server gets, here a fifth of one",
    ]
    for key, drained in together["drains"].items():
        lines.append(
            f"  {key}: {drained['pending_at_end']} messages pending after the last round, "
            f"delivered in {drained['drain_s']} s"
        )
    return lines


def _tail_lines(report: dict) -> list[str]:
    """Peak memory per process, the processes' log complaints, the run's time and commit."""
    lines: list[str] = []
    add, extend = lines.append, lines.extend
    add("")
    add("Peak memory per process (VmHWM)")
    by_role: dict[str, list] = {}
    for m in report["memory"]:
        by_role.setdefault(m["role"], []).append(m)
    rows = []
    for role, items in by_role.items():
        peak = max(items, key=lambda m: m["peak_rss_mib"])
        rows.append(
            [
                role,
                len(items),
                f"{statistics.median(m['peak_rss_mib'] for m in items):.1f}",
                f"{peak['peak_rss_mib']:.1f}",
                peak["process"],
            ]
        )
    extend(table(["role", "processes", "median MiB", "max MiB", "max in"], rows))
    problems = report["log_problems"]
    if problems:
        add("")
        add("Logs of the processes: ERROR lines, tracebacks, WARNING lines")
        rows = []
        for p in problems:
            serving, shutdown = p["serving"], p["shutdown"]
            kinds = {**serving["errors_by_message"], **shutdown["errors_by_message"]}
            top = max(kinds.items(), key=lambda kv: kv[1])[0] if kinds else ""
            rows.append(
                [
                    p["process"],
                    f"{serving['error_lines']} / {serving['tracebacks']} / "
                    f"{serving['warning_lines']}",
                    f"{shutdown['error_lines']} / {shutdown['tracebacks']} / "
                    f"{shutdown['warning_lines']}",
                    top.split(" ", 1)[-1][:48],
                ]
            )
        extend(table(["process", "serving", "after SIGTERM", "most frequent error"], rows))
    git = report.get("git") or {}
    add("")
    changed = git.get("changed_files")
    add(
        f"total {report['elapsed_s']:.0f} s; commit {git.get('commit', '?')}"
        + (f" with {changed} changed file(s) in the work tree" if changed else "")
    )
    return lines


def render(report: dict) -> str:
    cfg, summary, cmp_ = report["config"], report["cases"], report["comparisons"]
    lines: list[str] = []
    add, extend = lines.append, lines.extend
    machine = report["machine"]
    add("")
    add(
        f"Chat backend benchmark {report['started_at']}: "
        f"{cfg['rounds']} rounds x {cfg['seconds']} s, medians over rounds"
    )
    add(
        f"server processes on CPU {SERVER_CPU}, load generator on CPU {LOADGEN_CPU}; "
        f"{machine['cpus']} CPUs, load average {machine['loadavg_start']} at start"
    )
    add("")
    add("REST  POST /api/v1/chat  (closed-loop keep-alive clients, one session each)")
    extend(
        table(
            ["case", "clients", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors", "cpu"],
            _rest_rows(report),
        )
    )
    add("  cpu: the server process's CPU use during the case (1.00 = one core)")
    aa = cmp_["aa"]
    add("")
    add(
        f"A/A noise floor (flag off twice, {cfg['aa_clients']} clients, twin / first): "
        f"req/s {fmt(aa['rps'], 3)}, p50 {fmt(aa['p50_ms'], 3)}, p95 {fmt(aa['p95_ms'], 3)}, "
        f"p99 {fmt(aa['p99_ms'], 3)}: differences under {fmt((aa['noise_floor'] or 0) * 100, 0)}% "
        "are noise"
    )
    add("")
    add(
        f"Flag on / flag off (target: req/s >= {1 - TARGET_FLAG_RATIO:.2f}, "
        f"p50 and p99 <= {1 + TARGET_FLAG_RATIO:.2f})"
    )
    rows = []
    for row in cmp_["flag"]:
        s = summary[row["case"]]
        rows.append(
            [
                s["label"],
                row["clients"],
                fmt(row["rps_ratio"], 2),
                fmt(row["p50_ratio"], 2),
                fmt(row["p99_ratio"], 2),
                verdict(row["within_target"]),
                fmt(s.get("pending_at_end_median"), 0),
                fmt(s.get("drain_s_median")),
            ]
        )
    extend(
        table(
            ["case", "clients", "req/s", "p50", "p99", "target", "pending", "drain s"],
            rows,
        )
    )
    add(
        "  pending: messages not yet delivered to Foundry when the case ended (median); "
        "drain s: until delivered"
    )
    stuck = [k for k, s in summary.items() if s.get("left_after_drain_max")]
    if stuck:
        add(f"  drain incomplete (timed out or stalled) after: {', '.join(stuck)}")
    apart = [c for c in cfg["together_clients"] if c != cfg["aa_clients"]]
    if apart:
        loads = " and ".join(str(c) for c in apart)
        add(f"  at {loads} clients the flag's servers are measured side by side only (below)")
    for together in report["side_by_side"]:
        add("")
        extend(_side_by_side_lines(together))
    add("")
    add(f"Flag-off chat / constant view, req/s (target >= {TARGET_BASELINE_FRACTION:.2f})")
    rows = [
        [
            f"{row['clients']} clients",
            fmt(row["chat_rps"]),
            fmt(row["baseline_rps"]),
            fmt(row["fraction"], 2),
            verdict(row["within_target"]),
        ]
        for row in cmp_["baseline"]
    ]
    extend(table(["load", "chat", "constant", "fraction", "target"], rows))
    mw = cmp_["middleware"]
    add(
        f"  diagnostic ({mw['clients']} clients): the constant view behind the product's Django "
        f"middleware does {fmt(mw['baseline_mw_rps'])} req/s,"
    )
    add(
        f"  {fmt(mw['baseline_mw_vs_bare'], 2)} of the bare one; flag-off chat is "
        f"{fmt(mw['chat_vs_baseline_mw'], 2)} of that"
    )
    add("")
    ws = summary["ws"]
    add(
        f"WebSocket  /api/v1/chat/ws/<session>  ({ws['clients']} sockets, one session each, "
        f"closed loop): {fmt(ws['turns_per_s'])} turns/s, {ws['errors']} errors"
    )
    extend(
        table(
            ["time to", "p50 ms", "p95 ms", "p99 ms"],
            [
                ["first chunk"] + [fmt(ws[f"first_chunk_p{q}_ms"]) for q in (50, 95, 99)],
                ["reply frame"] + [fmt(ws[f"reply_p{q}_ms"]) for q in (50, 95, 99)],
            ],
        )
    )
    add("")
    cold = report["cold_start"]
    add(
        f"Cold start: first reply on a {cfg['history_turns']}-turn session right after the server "
        "started (median of reps)"
    )
    loc = cold["local"]
    rows = [
        [
            "local database",
            len(loc["reps"]),
            fmt(loc["cold_ms_median"]),
            fmt(loc["warm_ms_median"]),
            "-",
            "-",
            f"< {TARGET_COLD_MS}",
            verdict(loc["cold_ms_median"] is not None and loc["cold_ms_median"] < TARGET_COLD_MS),
            fmt(loc["all_loaded"]),
            "-",
        ]
    ]
    for f in cold["foundry"]:
        ok = f["cold_ms_median"] is not None and f["cold_ms_median"] < f["target_ms"]
        rows.append(
            [
                f"Foundry, {f['latency_ms']} ms latency",
                len(f["reps"]),
                fmt(f["cold_ms_median"]),
                fmt(f["warm_ms_median"]),
                fmt(f["emulator_reads_per_cold_turn"], 0),
                fmt(f["emulator_rtt_ms_median"]),
                f"< {fmt(f['target_ms'])}",
                verdict(ok),
                fmt(f["all_loaded"]),
                fmt(f["imported_after_ms_median"]),
            ]
        )
    extend(
        table(
            [
                "history from",
                "reps",
                "first ms",
                "next ms",
                "reads",
                "RTT ms",
                "target",
                "",
                "loaded",
                "all local ms",
            ],
            rows,
        )
    )
    add(
        "  reads: calls to Foundry during the first turn; RTT: one emulator round trip; "
        "loaded: the reply saw the old turns"
    )
    add(
        "  (locally: it counts them; from Foundry: it reflects the newest, and the whole thread "
        "was then imported in the background, all local that long after the second turn)"
    )
    add("")
    backlog = report["backlog"]
    add(
        f"Sync to the emulator (0 ms latency) from a backlog of {backlog['turns']} turns "
        f"({backlog['pending_messages']} messages, {cfg['backlog_sessions']} sessions)"
    )
    rows = [
        [
            s["workers"],
            fmt(s["messages_per_s"]),
            fmt(s["window_s"]),
            f"{s['delivered']} / {s['backlog_messages']}",
            s["threads_created"],
            fmt(s["first_delivery_after_s"]),
        ]
        for s in report["sync"]
    ]
    extend(
        table(["workers", "messages/s", "over s", "delivered", "threads", "1st delivery s"], rows)
    )
    q = report["queries"]
    add("")
    add("Database queries per chat turn (in-process; the REST view adds 1, the token lookup)")
    extend(
        table(
            ["flag", "per turn", "first turn of a session"],
            [
                ["off", q["off"]["steady_median"], q["off"]["first_turn"]],
                ["on", q["on"]["steady_median"], q["on"]["first_turn"]],
            ],
        )
    )
    instr = report["instructions"]
    add("")
    if "skipped" in instr:
        add(f"CPU instructions per chat request: skipped ({instr['skipped']})")
    else:
        add(
            f"CPU instructions per chat request (callgrind; {instr['requests']} requests through "
            "the REST view in process, no sender)"
        )
        add(
            f"  flag off {instr['off']['per_request'] / 1e6:.2f}M, flag on "
            f"{instr['on']['per_request'] / 1e6:.2f}M: on / off {fmt(instr['ratio'], 3)}"
        )
        add(
            "  the turns' own cost of the flag, repeatable on a busy machine; the kernel's "
            "writes (WAL) are not counted"
        )
    extend(_tail_lines(report))
    return "\n".join(lines)


def render_postgres(report: dict) -> str:
    lines = [
        "",
        f"Chat backend benchmark {report['started_at']}: the flag side by side on PostgreSQL "
        f"({report['postgres_server']}), each server on a database of its own, its pool "
        f"at most {report['database_pool_max_size']} connections",
        f"load average {report['machine']['loadavg_start']} at start; PostgreSQL's own "
        "processes are not pinned: they run on either CPU",
    ]
    for together in report["side_by_side"]:
        lines += ["", *_side_by_side_lines(together)]
    return "\n".join(lines + _tail_lines(report))


# ---- main ------------------------------------------------------------------------------------


def spawn_task(
    procs: Processes,
    name: str,
    args: list[str],
    env: dict,
    tmp: Path,
    *,
    cpu: int = LOADGEN_CPU,
    under: list[str] | None = None,
) -> tuple[Child, Path]:
    """Start `bench/tasks.py args` (under a wrapper such as valgrind, if given); its JSON goes
    to `<tmp>/<name>.json`."""
    out = tmp / f"{name}.json"
    child = procs.spawn(
        name,
        [*(under or []), *stack.task_args(*args)],
        env,
        role="task",
        cpu=cpu,
        stdout_path=out,
    )
    return child, out


def finish_task(procs: Processes, child: Child, out: Path, timeout: float = 240) -> dict:
    try:
        code = child.popen.wait(timeout=timeout)
    except Exception:
        procs.stop(child)
        raise
    procs.stop(child)
    if code != 0:
        raise RuntimeError(f"{child.name} failed ({code}):\n{child.log_tail()}")
    return json.loads(out.read_text())


def _side_by_side_problems(together: dict) -> list[str]:
    problems = []
    for row in together["cases"]:
        if not row["requests"]:
            problems.append(f"side by side, {row['case']}: no successful request")
        if row["errors"]:
            problems.append(f"side by side, {row['case']}: {row['errors']} errors")
    return problems


def failed_checks(report: dict) -> list[str]:
    """What did not work (never a time): a case without answers, non-200 answers, a cold turn
    that failed or did not see its history, a sync run that delivered nothing."""
    if report.get("database") == "postgresql":
        return [p for t in report["side_by_side"] for p in _side_by_side_problems(t)]
    problems = []
    for key, s in report["cases"].items():
        if not s["requests"]:
            problems.append(f"{key}: no successful request")
        if s["errors"]:
            problems.append(f"{key}: {s['errors']} errors")
    for together in report["side_by_side"]:
        problems += _side_by_side_problems(together)
    cold = report["cold_start"]
    for name, c in [("local", cold["local"])] + [
        (f"foundry {f['latency_ms']} ms", f) for f in cold["foundry"]
    ]:
        if c["errors"] or any(r["warm_status"] != 200 for r in c["reps"]):
            problems.append(f"cold start {name}: a turn failed")
        if not c["all_loaded"]:
            problems.append(f"cold start {name}: the old turns were not loaded")
    for s in report["sync"]:
        if not s["delivered"]:
            problems.append(f"sync with {s['workers']} worker(s): nothing delivered")
    return problems


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke test: tiny and fast")
    parser.add_argument("--rounds", type=int, help="rounds of the interleaved cases")
    parser.add_argument("--seconds", type=float, help="measured seconds per case and round")
    parser.add_argument("--out", type=Path, help="JSON results (default bench/results/<time>.json)")
    parser.add_argument("--keep-tmp", action="store_true", help="keep databases and logs")
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="only the flag's side-by-side phase, each server on a database of its own on this "
        "PostgreSQL server, created for the run and dropped after it "
        "(e.g. postgres://postgres@127.0.0.1:5432/postgres; its user may create databases)",
    )
    args = parser.parse_args(argv)

    cfg = Config.quick() if args.quick else Config()
    if args.rounds is not None:
        cfg.rounds = max(1, args.rounds)
    if args.seconds is not None:
        cfg.seconds = max(0.1, args.seconds)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_path = (
        args.out or ROOT / "bench" / "results" / f"{stamp}{'-quick' if args.quick else ''}.json"
    )

    if not shutil.which("taskset"):
        print("taskset (util-linux) is required", file=sys.stderr)
        return 2
    if os.cpu_count() and os.cpu_count() < 2:
        print("needs 2 CPUs (server on CPU 1, load generator on CPU 0)", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {LOADGEN_CPU})

    # Ctrl-C (even when started from a shell that ignores it in background jobs) and SIGTERM (a
    # CI timeout, `kill`) unwind through the `finally` below, which stops every child.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)

    tmp = Path(tempfile.mkdtemp(prefix="chat-bench-"))
    (tmp / "logs").mkdir()
    procs = Processes(tmp / "logs")
    failed = True
    began = time.monotonic()
    try:
        if args.postgres:
            report = run_postgres(cfg, procs, args.postgres, args.quick, stamp)
        else:
            report = run(cfg, procs, tmp, args.quick, stamp)
        report["elapsed_s"] = round(time.monotonic() - began, 1)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(report, indent=2))
        problems = failed_checks(report)
        report["failed_checks"] = problems
        out_path.write_text(json.dumps(report, indent=2))
        print(render_postgres(report) if args.postgres else render(report))
        print(f"\nJSON: {out_path}")
        failed = False
        if problems:
            print("\nFAILED CHECKS:\n  " + "\n  ".join(problems))
            return 1
        return 0
    except KeyboardInterrupt:
        log("interrupted; stopping every process")
        return 130
    finally:
        procs.stop_all()
        if failed or args.keep_tmp:
            log(f"databases and logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def git_info() -> dict:
    """The commit measured and whether the tree had local changes (read-only: no index lock)."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        head = run_checked(["git", "rev-parse", "--short", "HEAD"], env, timeout=10).strip()
        dirty = run_checked(
            ["git", "status", "--porcelain", "--untracked-files=no"], env, timeout=10
        )
    except (RuntimeError, OSError):
        return {}
    return {"commit": head, "changed_files": len(dirty.splitlines())}


def start_cases(
    procs: Processes,
    cases: list[Case],
    dbs,
    emulator: Emulator,
    down_url: str,
    env: dict[str, str] | None = None,
) -> None:
    """Each case's server on a fresh database of `dbs` (with `env` on top of its own), started
    and healthy; the flag-on ones are drained into `emulator`."""
    specs = [c.spec(dbs, emulator.url, down_url) for c in cases]
    for spec in specs:
        spec.env.update(env or {})
    servers = stack.start_servers(procs, specs, start_on_every_cpu=True)
    for case, server in zip(cases, servers, strict=True):
        case.server = server
        if case.config == "on":
            case.emulator = emulator


def run(cfg: Config, procs: Processes, tmp: Path, quick: bool, stamp: str) -> dict:
    loadavg_start = Path("/proc/loadavg").read_text().split()[:3]
    dbs = stack.Databases(tmp)
    log("migrating the template database")
    dbs.make_template()
    token = dbs.token

    # Background preparation on the load generator's CPU while the servers start on theirs.
    down_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    backlog_db = dbs.fresh("backlog")
    history_db = dbs.fresh("history")
    q_off_db, q_on_db = dbs.fresh("queries-off"), dbs.fresh("queries-on")
    on_env_no_sender = {**stack.foundry_env(down_url), "SYNC_IN_PROCESS": "false"}
    tasks = {
        "backlog": spawn_task(
            procs,
            "task-backlog",
            ["backlog", "--turns", str(cfg.backlog_turns), "--sessions", str(cfg.backlog_sessions)],
            stack.base_env(SQLITE_PATH=str(backlog_db), **on_env_no_sender),
            tmp,
        ),
        "history": spawn_task(
            procs,
            "task-history",
            ["history", "--sessions", str(cfg.cold_reps), "--turns", str(cfg.history_turns)],
            stack.base_env(SQLITE_PATH=str(history_db)),
            tmp,
        ),
        "q_off": spawn_task(
            procs,
            "task-queries-off",
            ["queries", "--turns", str(cfg.query_turns)],
            stack.base_env(SQLITE_PATH=str(q_off_db)),
            tmp,
        ),
        "q_on": spawn_task(
            procs,
            "task-queries-on",
            ["queries", "--turns", str(cfg.query_turns)],
            stack.base_env(SQLITE_PATH=str(q_on_db), **on_env_no_sender),
            tmp,
        ),
    }

    log("starting the emulator and the servers")
    emulator = Emulator(procs, latency_ms=FOUNDRY_LATENCY_MS).wait()
    cases = build_cases(cfg)
    start_cases(procs, cases, dbs, emulator, down_url)
    for case in cases:
        if case.config == "baseline-mw" and not stack.has_header(
            case.server.url + case.server.health_path, "X-Frame-Options"
        ):
            raise RuntimeError("the baseline with the product's middleware runs without it")
    log(f"{len(cases)} servers up; waiting for the background preparation")
    prepared = {name: finish_task(procs, *task) for name, task in tasks.items()}
    backlog = prepared["backlog"]
    log(f"backlog of {backlog['turns']} turns ready in {backlog['seconds']:.1f} s")

    sequential = [c for c in cases if c.sequential]
    log(f"{len(sequential)} cases x {cfg.rounds} rounds x {cfg.seconds} s")
    together_only = [c.server.child for c in cases if not c.sequential]
    for child in together_only:
        child.pause()
    run_rounds(sequential, cfg, token, procs)
    for child in together_only:
        child.resume()
    summary = {c.key: summarize_case(c) for c in sequential}
    together = [side_by_side(cases, cfg, token, clients) for clients in cfg.together_clients]
    procs.stop_many([case.server.child for case in cases])

    log("cold start: local history")
    cold_local = cold_start_local(procs, cfg, history_db, token)
    cold_foundry = []
    for latency, reps in cfg.cold_foundry:
        log(f"cold start: history from Foundry at {latency} ms")
        cold_foundry.append(cold_start_foundry(procs, cfg, dbs, emulator, latency, reps))

    log("sync throughput")
    sync = sync_throughput(procs, cfg, dbs, backlog_db, prepared["backlog"], emulator)
    procs.stop(emulator.child)

    log("instructions per request (callgrind)")
    instructions = instruction_counts(procs, cfg, dbs, on_env_no_sender, tmp)

    return make_report(
        cfg,
        procs,
        stamp,
        quick,
        loadavg_start,
        cases=summary,
        comparisons=compare(summary, cfg),
        side_by_side=together,
        cold_start={"local": cold_local, "foundry": cold_foundry},
        backlog=prepared["backlog"],
        sync=sync,
        queries={"off": prepared["q_off"], "on": prepared["q_on"]},
        instructions=instructions,
    )


def make_report(
    cfg: Config, procs: Processes, stamp: str, quick: bool, loadavg_start: list[str], **figures
) -> dict:
    """A run's report: `figures`, framed by the run's settings, the machine, the processes'
    memory and log complaints, and the commit."""
    return {
        "started_at": stamp,
        "quick": quick,
        "config": {**cfg.__dict__, "foundry_latency_ms": FOUNDRY_LATENCY_MS},
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_start": " ".join(loadavg_start),
            "loadavg_end": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
            "python": platform.python_version(),
        },
        **figures,
        "memory": [m for m in procs.memory_report() if m["role"] != "task"],
        "log_problems": procs.log_problems(),
        "git": git_info(),
    }


def run_postgres(cfg: Config, procs: Processes, url: str, quick: bool, stamp: str) -> dict:
    """The side-by-side phase alone, every server on a PostgreSQL database of its own (cloned
    from a migrated template, dropped at the end). Their turns and senders then meet
    PostgreSQL's row locks and sequences instead of SQLite's one writer."""
    loadavg_start = Path("/proc/loadavg").read_text().split()[:3]
    dbs = stack.PostgresDatabases(url)
    try:
        log("migrating the template database (PostgreSQL)")
        dbs.make_template()
        log("starting the emulator")
        emulator = Emulator(procs, latency_ms=FOUNDRY_LATENCY_MS).wait()
        down_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        # One load's servers at a time, their pools sized so that together they stay within
        # the server's connections (the product's default, 20 each, is too many for 100).
        pool = max(2, min(20, (dbs.max_connections() - 10) // len(SIDE_BY_SIDE)))
        together = []
        for clients in cfg.together_clients:
            log(f"starting the servers for {clients} clients")
            wanted = side_by_side_keys(cfg, clients)
            cases = [c for c in build_cases(cfg) if c.key in wanted]
            start_cases(
                procs, cases, dbs, emulator, down_url, {"DATABASE_POOL_MAX_SIZE": str(pool)}
            )
            together.append(side_by_side(cases, cfg, dbs.token, clients))
            procs.stop_many([case.server.child for case in cases])
        procs.stop(emulator.child)
    finally:
        procs.stop_all()  # their connections end before their databases are dropped
        dbs.drop_all()
    server = urllib.parse.urlsplit(url)
    return make_report(
        cfg,
        procs,
        stamp,
        quick,
        loadavg_start,
        database="postgresql",
        postgres_server=f"{server.hostname}:{server.port or 5432}",  # no credentials
        database_pool_max_size=pool,
        side_by_side=together,
    )


if __name__ == "__main__":
    sys.exit(main())
