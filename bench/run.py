"""Benchmark harness of the chat backend (issue 7): what the Foundry flag, the sinks and the stack
cost, measured side by side in one run so that ratios hold on a noisy machine.

    .venv/bin/python bench/run.py [--quick] [--rounds N] [--seconds S] [--out FILE.json]

It starts the real server (Daphne, `chatproject.asgi:application`), the Foundry emulator, sync
workers and a constant-view baseline as separate processes on 127.0.0.1, pinned to CPU 1
(`taskset -c 1`), and drives them from this process, pinned to CPU 0, with closed-loop keep-alive
clients. The method is /work/shared/BENCHMARKING.md's: REST and WebSocket cases interleaved in
rotated rounds, medians over rounds, an A/A pair for the noise floor, a drain after every case
that leaves work for the emulator. Figures are medians; compare cases only by their ratios.

Cases:
  1-2. REST chat at 1/8/32 clients: flag off; flag on with the emulator at 150 ms; flag on with
       the emulator down (a closed port); ratios against flag off.
  3.   WebSocket: N sockets sending turns closed-loop (turns/s, first chunk, reply).
  4.   Cold start: first reply on a 200-turn session after a server restart (local history), and
       on a session pointed at a 400-message Foundry thread (history loaded from the emulator).
  5.   Sync throughput from a backlog with 1 and 4 `manage.py foundry_sync` workers; queries per
       chat turn (flag off and on).
  6.   Baseline: a bare Daphne + Django constant view under the same load; peak memory per
       process.

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
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import loadgen, stack  # noqa: E402
from bench.procs import (  # noqa: E402
    LOADGEN_CPU,
    ROOT,
    SERVER_CPU,
    Child,
    Processes,
    cpu_seconds,
    free_port,
    run_checked,
)
from bench.stack import PYTHON, Emulator, Server, ServerSpec  # noqa: E402

FOUNDRY_LATENCY_MS = 150
TARGET_FLAG_RATIO = 0.10  # flag on: p50, p99 and req/s within 10% of flag off
TARGET_BASELINE_FRACTION = 0.50  # flag-off chat req/s >= 50% of the constant view's
TARGET_COLD_MS = 200


@dataclass
class Config:
    rounds: int = 3
    seconds: float = 3.0
    warmup: float = 0.4
    settle: float = 0.2  # pause between cases
    clients: tuple[int, ...] = (1, 8, 32)
    aa_clients: int = 8
    sockets: int = 100
    cold_reps: int = 5
    cold_foundry_reps: int = 3
    cold_foundry_latencies: tuple[int, ...] = (FOUNDRY_LATENCY_MS, 0)
    history_turns: int = 200
    backlog_turns: int = 10_000
    backlog_sessions: int = 100
    sync_workers: tuple[int, ...] = (1, 4)
    sync_seconds: float = 12.0
    drain_timeout: float = 60.0
    rtt_samples: int = 20
    query_turns: int = 8

    @classmethod
    def quick(cls) -> "Config":
        return cls(
            rounds=1,
            seconds=0.6,
            warmup=0.2,
            settle=0.05,
            clients=(8,),
            sockets=10,
            cold_reps=1,
            cold_foundry_reps=1,
            cold_foundry_latencies=(FOUNDRY_LATENCY_MS,),
            backlog_turns=300,
            backlog_sessions=10,
            sync_seconds=4.0,
            drain_timeout=20.0,
            rtt_samples=5,
            query_turns=4,
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
    config: str  # off | on | down | baseline | off-twin
    clients: int
    server: Server | None = None
    emulator: Emulator | None = None  # set: drain into it after the case
    rounds: list[dict] = field(default_factory=list)

    def spec(self, dbs: stack.Databases, emulator_url: str, down_url: str) -> ServerSpec:
        if self.config == "baseline":
            return ServerSpec(self.key, app="bench.baseline.asgi:application")
        env = {}
        if self.config == "on":
            env = stack.foundry_env(emulator_url)
        elif self.config == "down":
            env = stack.foundry_env(down_url)
        return ServerSpec(self.key, env=env, db=dbs.fresh(self.key))


def build_cases(cfg: Config) -> list[Case]:
    cases = []
    for clients in cfg.clients:
        cases += [
            Case(f"off-{clients}", "flag off", "rest", "off", clients),
            Case(f"on-{clients}", f"flag on, Foundry {FOUNDRY_LATENCY_MS} ms", "rest", "on", clients),
            Case(f"down-{clients}", "flag on, Foundry down", "rest", "down", clients),
            Case(f"base-{clients}", "baseline constant view", "rest", "baseline", clients),
        ]
    cases.append(Case(f"twin-{cfg.aa_clients}", "flag off (A/A twin)", "rest", "off-twin", cfg.aa_clients))
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
    finally:
        emulator.set_latency(FOUNDRY_LATENCY_MS)
    pending = stack.backlog_pending(db)
    return {
        "pending_at_end": pending_at_end,
        "drain_s": round(time.monotonic() - began, 2),
        "left_after_drain": pending,
    }


def run_rounds(cases: list[Case], cfg: Config, token: str, procs: Processes) -> None:
    servers = [c.server.child for c in cases]
    for child in servers:
        child.pause()
    for r in range(cfg.rounds):
        order = round_order(cases, r, cfg.rounds)
        log(f"round {r + 1}/{cfg.rounds}: " + " ".join(c.key for c in order))
        for case in order:
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
            elif case.config == "down":
                result["pending_at_end"] = stack.backlog_pending(case.server.spec.db)
            child.sample_memory()
            child.pause()
            case.rounds.append(result)
    for child in servers:
        child.resume()


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


def compare(summary: dict, cfg: Config) -> dict:
    out = {"flag": [], "baseline": [], "aa": None}
    for clients in cfg.clients:
        off = summary[f"off-{clients}"]
        for other in (f"on-{clients}", f"down-{clients}"):
            s = summary[other]
            row = {
                "case": other,
                "clients": clients,
                "rps_ratio": ratio(s["rps"], off["rps"]),
                "p50_ratio": ratio(s["p50_ms"], off["p50_ms"]),
                "p99_ratio": ratio(s["p99_ms"], off["p99_ms"]),
            }
            row["within_target"] = all(
                v is not None
                for v in (row["rps_ratio"], row["p50_ratio"], row["p99_ratio"])
            ) and (
                row["rps_ratio"] >= 1 - TARGET_FLAG_RATIO
                and row["p50_ratio"] <= 1 + TARGET_FLAG_RATIO
                and row["p99_ratio"] <= 1 + TARGET_FLAG_RATIO
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
    a, b = summary[f"off-{cfg.aa_clients}"], summary[f"twin-{cfg.aa_clients}"]
    aa = {
        k: ratio(b[k], a[k]) for k in ("rps", "p50_ms", "p95_ms", "p99_ms")
    }
    aa["noise_floor"] = round(
        max(abs(1 - v) for v in aa.values() if v is not None), 3
    ) if any(v is not None for v in aa.values()) else None
    out["aa"] = aa
    return out


# ---- cold start ------------------------------------------------------------------------------


def first_turns(server: Server, token: str, session_id: str) -> dict:
    """The first chat turn on `session_id` after the server started, then a second (warm) one."""
    url = server.url + "/api/v1/chat"
    cold_s, status, body = asyncio.run(
        loadgen.single_post(url, token, {"message": "cold start turn", "session_id": session_id})
    )
    warm_s, warm_status, _ = asyncio.run(
        loadgen.single_post(url, token, {"message": "warm turn", "session_id": session_id})
    )
    reply = (body or {}).get("reply", "")
    return {
        "cold_ms": round(cold_s * 1000, 2),
        "warm_ms": round(warm_s * 1000, 2),
        "status": status,
        "warm_status": warm_status,
        "reply_head": reply[:40],
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
        result["history_loaded"] = result["reply_head"].startswith(f"Turn {cfg.history_turns + 1}:")
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
    procs: Processes, cfg: Config, dbs: stack.Databases, emulator: Emulator, latency_ms: int
) -> dict:
    """A session pointed (`manage.py foundry_import_thread`) at a thread of 2 x history_turns
    messages on a fresh database; the first turn loads that history from the emulator."""
    emulator.set_latency(0)
    threads = [emulator.create_thread(history_messages(cfg.history_turns)) for _ in range(cfg.cold_foundry_reps)]
    emulator.set_latency(latency_ms)
    env = stack.foundry_env(emulator.url)
    probe = threads[0]
    rtt = asyncio.run(loadgen.round_trips(emulator.thread_url(probe), cfg.rtt_samples))
    page = asyncio.run(loadgen.round_trips(emulator.messages_page_url(probe), max(3, cfg.rtt_samples // 4)))
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
        try:
            result = first_turns(server, dbs.token, "cold-f")
        finally:
            procs.stop(server.child)
        result["history_loaded"] = result["reply_head"].startswith(f"Turn {cfg.history_turns + 1}:")
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
    return out


# ---- sync throughput -------------------------------------------------------------------------


def sync_throughput(
    procs: Processes, cfg: Config, dbs: stack.Databases, backlog_db: Path, backlog: dict, emulator: Emulator
) -> list[dict]:
    expected = backlog["pending_messages"]
    results = []
    for workers in cfg.sync_workers:
        db = dbs.copy(backlog_db, f"sync-{workers}w")
        emulator.reset(data=True)
        emulator.set_latency(0)
        started = time.monotonic()
        children = [
            stack.spawn_worker(procs, f"worker-{workers}w-{i}", db, emulator.url) for i in range(workers)
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
            for c in children:
                procs.stop(c)
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


def render(report: dict) -> str:
    cfg = report["config"]
    summary = report["cases"]
    cmp_ = report["comparisons"]
    lines = []
    add = lines.append
    add("")
    add(
        f"Chat backend benchmark  {report['started_at']}  ({cfg['rounds']} rounds x {cfg['seconds']} s, "
        f"medians over rounds; server on CPU {SERVER_CPU}, load generator on CPU {LOADGEN_CPU})"
    )
    add(f"machine: {report['machine']['cpus']} CPUs, load average at start {report['machine']['loadavg_start']}")
    add("")
    add("REST  POST /api/v1/chat  (closed-loop keep-alive clients, one session each)")
    head = f"{'case':<28}{'clients':>8}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'errors':>8}{'cpu':>6}"
    add(head)
    add("-" * len(head))
    for clients in cfg["clients"]:
        for key in (f"off-{clients}", f"on-{clients}", f"down-{clients}", f"base-{clients}"):
            s = summary[key]
            add(
                f"{s['label']:<28}{clients:>8}{fmt(s['rps']):>9}{fmt(s['p50_ms']):>9}"
                f"{fmt(s['p95_ms']):>9}{fmt(s['p99_ms']):>9}{s['errors']:>8}{fmt(s['server_cpu_util'], 2):>6}"
            )
        if clients == cfg["aa_clients"]:
            s = summary[f"twin-{clients}"]
            add(
                f"{s['label']:<28}{clients:>8}{fmt(s['rps']):>9}{fmt(s['p50_ms']):>9}"
                f"{fmt(s['p95_ms']):>9}{fmt(s['p99_ms']):>9}{s['errors']:>8}{fmt(s['server_cpu_util'], 2):>6}"
            )
    add("(cpu: the server process's CPU use during the case, 1.00 = one core)")
    add("")
    aa = cmp_["aa"]
    add(
        f"A/A noise floor (flag off twice, {cfg['aa_clients']} clients, twin/first): req/s {fmt(aa['rps'], 3)}, "
        f"p50 {fmt(aa['p50_ms'], 3)}, p95 {fmt(aa['p95_ms'], 3)}, p99 {fmt(aa['p99_ms'], 3)}  "
        f"-> differences below {fmt((aa['noise_floor'] or 0) * 100, 0)}% are noise"
    )
    add("")
    add(f"Flag on vs flag off (ratios of medians; target: req/s >= {1 - TARGET_FLAG_RATIO:.2f}, p50 and p99 <= {1 + TARGET_FLAG_RATIO:.2f})")
    head = f"{'case':<34}{'clients':>8}{'req/s':>8}{'p50':>8}{'p99':>8}  target"
    add(head)
    add("-" * len(head))
    for row in cmp_["flag"]:
        s = summary[row["case"]]
        add(
            f"{s['label']:<34}{row['clients']:>8}{fmt(row['rps_ratio'], 2):>8}{fmt(row['p50_ratio'], 2):>8}"
            f"{fmt(row['p99_ratio'], 2):>8}  {verdict(row['within_target'])}"
        )
    for clients in cfg["clients"]:
        s = summary[f"on-{clients}"]
        if "pending_at_end_median" in s:
            add(
                f"  flag on, {clients} clients: {fmt(s['pending_at_end_median'], 0)} messages still pending "
                f"when the case ended (median), drained in {fmt(s['drain_s_median'])} s"
                + ("" if not s["left_after_drain_max"] else f", {s['left_after_drain_max']} left (drain timed out)")
            )
    add("")
    add(f"Flag-off chat as a fraction of the constant view (target >= {TARGET_BASELINE_FRACTION:.2f})")
    for row in cmp_["baseline"]:
        add(
            f"  {row['clients']:>3} clients: {fmt(row['chat_rps'])} / {fmt(row['baseline_rps'])} req/s = "
            f"{fmt(row['fraction'], 2)}  {verdict(row['within_target'])}"
        )
    add("")
    ws = summary["ws"]
    add(f"WebSocket  /api/v1/chat/ws/<session>  ({ws['clients']} sockets, one session each, closed loop)")
    add(
        f"  turns/s {fmt(ws['turns_per_s'])}   first chunk p50/p95/p99 {fmt(ws['first_chunk_p50_ms'])} / "
        f"{fmt(ws['first_chunk_p95_ms'])} / {fmt(ws['first_chunk_p99_ms'])} ms   reply p50/p95/p99 "
        f"{fmt(ws['reply_p50_ms'])} / {fmt(ws['reply_p95_ms'])} / {fmt(ws['reply_p99_ms'])} ms   errors {ws['errors']}"
    )
    add("")
    cold = report["cold_start"]
    add(f"Cold start: first reply on a {cfg['history_turns']}-turn session right after the server started (median of reps)")
    loc = cold["local"]
    add(
        f"  local history      : {fmt(loc['cold_ms_median'])} ms (next turn {fmt(loc['warm_ms_median'])} ms) "
        f"over {len(loc['reps'])} restarts; history read: {fmt(loc['all_loaded'])}   "
        f"target < {TARGET_COLD_MS} ms  {verdict(loc['cold_ms_median'] is not None and loc['cold_ms_median'] < TARGET_COLD_MS)}"
    )
    for f in cold["foundry"]:
        ok = f["cold_ms_median"] is not None and f["cold_ms_median"] < f["target_ms"]
        add(
            f"  from Foundry, {f['latency_ms']:>3} ms: {fmt(f['cold_ms_median'])} ms (next turn {fmt(f['warm_ms_median'])} ms) "
            f"loading {f['thread_messages']} messages; emulator round trip {fmt(f['emulator_rtt_ms_median'])} ms "
            f"(a 100-message page {fmt(f['emulator_page100_rtt_ms_median'])} ms); history loaded: {fmt(f['all_loaded'])}   "
            f"target < {fmt(f['target_ms'])} ms  {verdict(ok)}"
        )
    add("")
    add(f"Sync throughput to the emulator (0 ms latency), backlog of {report['backlog']['turns']} turns "
        f"({report['backlog']['pending_messages']} messages) over {cfg['backlog_sessions']} sessions")
    for s in report["sync"]:
        add(
            f"  {s['workers']} worker(s): {fmt(s['messages_per_s'])} messages/s over {fmt(s['window_s'])} s "
            f"({s['delivered']} delivered, {s['threads_created']} threads; all delivered: {fmt(s['complete'])}; "
            f"first delivery {fmt(s['first_delivery_after_s'])} s after start)"
        )
    q = report["queries"]
    add("")
    add(
        f"Database queries per chat turn (in-process, CaptureQueriesContext; the HTTP view adds 1 for the token): "
        f"flag off {q['off']['steady_median']} (first turn of a session {q['off']['first_turn']}), "
        f"flag on {q['on']['steady_median']} (first turn {q['on']['first_turn']})"
    )
    add("")
    add("Peak memory (VmHWM)")
    by_role: dict[str, list] = {}
    for m in report["memory"]:
        by_role.setdefault(m["role"], []).append(m)
    for role, items in by_role.items():
        peak = max(items, key=lambda m: m["peak_rss_mib"])
        add(
            f"  {role:<9} max {peak['peak_rss_mib']:.1f} MiB ({peak['process']}), "
            f"median {statistics.median(m['peak_rss_mib'] for m in items):.1f} MiB over {len(items)} process(es)"
        )
    add("")
    add(f"total time {report['elapsed_s']:.0f} s")
    return "\n".join(lines)


# ---- main ------------------------------------------------------------------------------------


def spawn_task(procs: Processes, name: str, args: list[str], env: dict, tmp: Path) -> tuple[Child, Path]:
    out = tmp / f"{name}.json"
    child = procs.spawn(name, stack.task_args(*args), env, role="task", cpu=LOADGEN_CPU, stdout_path=out)
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


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke test: tiny and fast")
    parser.add_argument("--rounds", type=int, help="rounds of the interleaved cases")
    parser.add_argument("--seconds", type=float, help="measured seconds per case and round")
    parser.add_argument("--out", type=Path, help="JSON results (default bench/results/<time>.json)")
    parser.add_argument("--keep-tmp", action="store_true", help="keep databases and logs")
    args = parser.parse_args(argv)

    cfg = Config.quick() if args.quick else Config()
    if args.rounds is not None:
        cfg.rounds = max(1, args.rounds)
    if args.seconds is not None:
        cfg.seconds = max(0.1, args.seconds)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_path = args.out or ROOT / "bench" / "results" / f"{stamp}{'-quick' if args.quick else ''}.json"

    if not shutil.which("taskset"):
        print("taskset (util-linux) is required", file=sys.stderr)
        return 2
    if os.cpu_count() and os.cpu_count() < 2:
        print("needs 2 CPUs (server on CPU 1, load generator on CPU 0)", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {LOADGEN_CPU})

    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, through the `finally` below.
    signal.signal(signal.SIGTERM, _interrupt)

    tmp = Path(tempfile.mkdtemp(prefix="chat-bench-"))
    (tmp / "logs").mkdir()
    procs = Processes(tmp / "logs")
    failed = True
    began = time.monotonic()
    try:
        report = run(cfg, procs, tmp, args.quick, stamp)
        report["elapsed_s"] = round(time.monotonic() - began, 1)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(report, indent=2))
        print(render(report))
        print(f"\nJSON: {out_path}")
        failed = False
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
            procs, "task-queries-off", ["queries", "--turns", str(cfg.query_turns)],
            stack.base_env(SQLITE_PATH=str(q_off_db)), tmp,
        ),
        "q_on": spawn_task(
            procs, "task-queries-on", ["queries", "--turns", str(cfg.query_turns)],
            stack.base_env(SQLITE_PATH=str(q_on_db), **on_env_no_sender), tmp,
        ),
    }

    log("starting the emulator and the servers")
    emulator = Emulator(procs, latency_ms=FOUNDRY_LATENCY_MS).wait()
    cases = build_cases(cfg)
    specs = [c.spec(dbs, emulator.url, down_url) for c in cases]
    servers = stack.start_servers(procs, specs)
    for case, server in zip(cases, servers, strict=True):
        case.server = server
        if case.config == "on":
            case.emulator = emulator
    log(f"{len(servers)} servers up; waiting for the background preparation")
    prepared = {name: finish_task(procs, *task) for name, task in tasks.items()}
    log(
        f"backlog of {prepared['backlog']['turns']} turns ready in {prepared['backlog']['seconds']:.1f} s"
    )

    log(f"{len(cases)} cases x {cfg.rounds} rounds x {cfg.seconds} s")
    run_rounds(cases, cfg, token, procs)
    summary = {c.key: summarize_case(c) for c in cases}
    for case in cases:
        procs.stop(case.server.child)

    log("cold start: local history")
    cold_local = cold_start_local(procs, cfg, history_db, token)
    cold_foundry = []
    for latency in cfg.cold_foundry_latencies:
        log(f"cold start: history from Foundry at {latency} ms")
        cold_foundry.append(cold_start_foundry(procs, cfg, dbs, emulator, latency))

    log("sync throughput")
    sync = sync_throughput(procs, cfg, dbs, backlog_db, prepared["backlog"], emulator)
    procs.stop(emulator.child)

    report = {
        "started_at": stamp,
        "quick": quick,
        "config": {
            **{k: v for k, v in cfg.__dict__.items()},
            "foundry_latency_ms": FOUNDRY_LATENCY_MS,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_start": " ".join(loadavg_start),
            "loadavg_end": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
            "python": platform.python_version(),
        },
        "cases": summary,
        "comparisons": compare(summary, cfg),
        "cold_start": {"local": cold_local, "foundry": cold_foundry},
        "backlog": prepared["backlog"],
        "sync": sync,
        "queries": {"off": prepared["q_off"], "on": prepared["q_on"]},
        "memory": [m for m in procs.memory_report() if m["role"] != "task"],
    }
    return report


if __name__ == "__main__":
    sys.exit(main())
