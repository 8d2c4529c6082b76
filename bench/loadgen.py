"""Closed-loop load: each client sends its next request when the last one is answered, over a
keep-alive connection (aiohttp), as real API clients do. Runs in the harness process, which is
pinned to the load generator's CPU.

A request counts when it started after the warm-up and ended before the window closed; any answer
other than 200 (or a transport error, or a timeout) is an error, counted by kind.
"""

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

REQUEST_TIMEOUT_S = 30


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between closest ranks."""
    if not sorted_values:
        return None
    if len(sorted_values) == 1:
        return sorted_values[0]
    rank = (len(sorted_values) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def summary_ms(latencies_s: list[float]) -> dict:
    values = sorted(latencies_s)
    out = {}
    for q in (50, 95, 99):
        v = percentile(values, q)
        out[f"p{q}_ms"] = round(v * 1000, 2) if v is not None else None
    return out


@dataclass
class Window:
    """The measured interval of a run: [start, end) on time.perf_counter()."""

    start: float
    end: float

    def holds(self, began: float, ended: float) -> bool:
        return began >= self.start and ended <= self.end


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    # Answers (200) that ended in the window, wherever they started: the work a server finished
    # in it, to divide its CPU time in the window by.
    completed: int = 0

    def result(self, seconds: float) -> dict:
        return {
            "requests": len(self.latencies),
            "completed": self.completed,
            "errors": sum(self.errors.values()),
            "error_kinds": dict(self.errors),
            "rps": round(len(self.latencies) / seconds, 1),
            **summary_ms(self.latencies),
        }


async def rest_chat(
    *,
    url: str,
    token: str | None,
    clients: int,
    seconds: float,
    warmup: float,
    session_prefix: str,
    keep_latencies: bool = False,
) -> dict:
    """`clients` closed-loop clients POSTing chat messages to `url`, each on its own session;
    with `keep_latencies`, the result also holds every answer's latency (`latencies_ms`)."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Token {token}"
    tally = Tally()
    connector = aiohttp.TCPConnector(limit=clients, keepalive_timeout=120)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    now = time.perf_counter()
    window = Window(now + warmup, now + warmup + seconds)

    async def client(index: int, http: aiohttp.ClientSession) -> None:
        sent = 0
        session_id = f"{session_prefix}{index}"
        while True:
            began = time.perf_counter()
            if began >= window.end:
                return
            sent += 1
            body = json.dumps(
                {
                    "message": f"benchmark message {sent} from client {index}",
                    "session_id": session_id,
                }
            ).encode()
            try:
                async with http.post(url, data=body, headers=headers) as response:
                    await response.read()
                    status = response.status
            except (TimeoutError, aiohttp.ClientError) as exc:
                status = type(exc).__name__
            ended = time.perf_counter()
            if status == 200 and window.start <= ended <= window.end:
                tally.completed += 1
            if not window.holds(began, ended):
                continue
            if status == 200:
                tally.latencies.append(ended - began)
            else:
                tally.errors[str(status)] += 1
                if not isinstance(status, int):
                    await asyncio.sleep(0.05)  # a refused connection must not spin

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        await asyncio.gather(*(client(i, http) for i in range(clients)))
    result = {"clients": clients, "seconds": seconds, **tally.result(seconds)}
    if keep_latencies:
        result["latencies_ms"] = [round(1000 * v, 3) for v in tally.latencies]
    return result


async def single_post(url: str, token: str, body: dict) -> tuple[float, int, dict | None]:
    """One POST on a new connection: (seconds, status, JSON body or None)."""
    headers = {"Authorization": f"Token {token}"}
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        began = time.perf_counter()
        async with http.post(url, json=body, headers=headers) as response:
            raw = await response.read()
            ended = time.perf_counter()
            status = response.status
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    return ended - began, status, data


async def round_trips(url: str, count: int) -> list[float]:
    """`count` sequential GETs over one keep-alive connection (the first one warms it up)."""
    times = []
    async with aiohttp.ClientSession(headers={"api-key": "bench-any-key"}) as http:
        for i in range(count + 1):
            began = time.perf_counter()
            async with http.get(url) as response:
                await response.read()
                response.raise_for_status()
            if i:
                times.append(time.perf_counter() - began)
    return times


async def websocket_chat(
    *,
    base_url: str,
    token: str,
    sockets: int,
    seconds: float,
    warmup: float,
    session_prefix: str,
    connect_concurrency: int = 25,
) -> dict:
    """`sockets` WebSockets, each on its own session, each sending its next turn when the reply
    frame of the last one arrived: turns/s, time to the first chunk and to the reply frame."""
    ws_base = base_url.replace("http://", "ws://", 1)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    first_chunk: list[float] = []
    replies: list[float] = []
    errors: Counter = Counter()
    gate = asyncio.Semaphore(connect_concurrency)
    connector = aiohttp.TCPConnector(limit=0)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

        async def open_socket(index: int):
            async with gate:
                url = f"{ws_base}/api/v1/chat/ws/{session_prefix}{index}?token={token}"
                return await http.ws_connect(url, heartbeat=None, max_msg_size=0)

        opened = await asyncio.gather(
            *(open_socket(i) for i in range(sockets)), return_exceptions=True
        )
        socks = [s for s in opened if not isinstance(s, BaseException)]
        for s in opened:
            if isinstance(s, BaseException):
                errors[f"connect {type(s).__name__}"] += 1
        now = time.perf_counter()
        window = Window(now + warmup, now + warmup + seconds)

        async def turn_loop(index: int, ws: aiohttp.ClientWebSocketResponse) -> None:
            sent = 0
            while True:
                began = time.perf_counter()
                if began >= window.end:
                    return
                sent += 1
                chunk_at = None
                try:
                    await ws.send_str(
                        json.dumps({"type": "message", "message": f"ws turn {sent} of {index}"})
                    )
                    while True:
                        msg = await asyncio.wait_for(ws.receive(), REQUEST_TIMEOUT_S)
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            raise ConnectionError(f"socket closed ({msg.type.name})")
                        frame = json.loads(msg.data)
                        kind = frame.get("type")
                        if kind == "chunk":
                            chunk_at = chunk_at or time.perf_counter()
                        elif kind == "reply":
                            outcome = "ok"
                            break
                        else:
                            outcome = f"frame {frame.get('code', kind)}"
                            break
                except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
                    errors[type(exc).__name__] += 1
                    return  # this socket is done
                ended = time.perf_counter()
                if not window.holds(began, ended):
                    continue
                if outcome == "ok":
                    replies.append(ended - began)
                    first_chunk.append((chunk_at or ended) - began)
                else:
                    errors[outcome] += 1

        try:
            await asyncio.gather(*(turn_loop(i, ws) for i, ws in enumerate(socks)))
        finally:
            await asyncio.gather(*(ws.close() for ws in socks), return_exceptions=True)

    first = summary_ms(first_chunk)
    reply = summary_ms(replies)
    return {
        "sockets": sockets,
        "connected": len(socks),
        "seconds": seconds,
        "turns": len(replies),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "turns_per_s": round(len(replies) / seconds, 1),
        **{f"first_chunk_{k}": v for k, v in first.items()},
        **{f"reply_{k}": v for k, v in reply.items()},
    }
