"""Child processes of the benchmark: started pinned to a CPU, tracked, and always stopped.

Every child is started through `Processes.spawn` from the main thread. It is pinned with
`taskset -c CPU`, runs in its own process group, and is killed by the kernel if the harness dies
(PR_SET_PDEATHSIG; SIGKILL, because a paused child would hold a SIGTERM pending), so no server
outlives a crashed or killed harness. `Processes.stop_all` (called from a `finally`, also on
Ctrl-C) terminates what is left, then kills what does not stop.

Servers that are not under test are paused (`Child.pause`, SIGSTOP) so that their background
threads (the in-process sender polls its database every second) add no load to the case that
is measured; `resume` (SIGCONT) before their own turn.
"""

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
LOADGEN_CPU = 0
SERVER_CPU = 1

_PR_SET_PDEATHSIG = 1


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _child_setup() -> None:  # runs in the child between fork and exec
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def peak_rss_kib(pid: int) -> int | None:
    """VmHWM (peak resident set size) of a live process, in KiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a live process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def cpu_seconds_fine(pid: int) -> float | None:
    """The CPU time of a live process's threads in nanoseconds' resolution (the scheduler's
    figures), where /proc/<pid>/stat counts 10 ms ticks; falls back to those."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue  # the thread ended meanwhile
    except OSError:
        return cpu_seconds(pid)
    return total / 1e9 if total else cpu_seconds(pid)


class Child:
    def __init__(self, name: str, popen: subprocess.Popen, log_path: Path, role: str):
        self.name = name
        self.popen = popen
        self.log_path = log_path
        self.role = role  # server, emulator, worker, ...
        self.peak_rss_kib: int | None = None
        self.log_bytes_at_stop: int | None = None  # what it logged before it was told to stop

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def sample_memory(self) -> None:
        value = peak_rss_kib(self.pid) if self.alive() else None
        if value is not None:
            self.peak_rss_kib = max(self.peak_rss_kib or 0, value)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def quiesce(
        self, *, idle_cpu_s: float = 0.003, step: float = 0.05, limit: float = 2.0
    ) -> float:
        """Wait (at most `limit` s) until the process uses under `idle_cpu_s` of CPU per `step`:
        it has finished what the last case left it (closing connections, sending a backlog)."""
        began = time.monotonic()
        last = cpu_seconds(self.pid)
        while last is not None and time.monotonic() - began < limit:
            time.sleep(step)
            now = cpu_seconds(self.pid)
            if now is None or now - last < idle_cpu_s:
                break
            last = now
        return time.monotonic() - began

    def pin(self, cpu: int) -> None:
        """Pin every thread of the process to `cpu` (threads it starts later inherit that),
        until a pass over its threads finds them all pinned."""
        while True:
            moved = 0
            try:
                tids = [int(t) for t in os.listdir(f"/proc/{self.pid}/task")]
            except OSError:
                return  # it has exited
            for tid in tids:
                try:
                    if os.sched_getaffinity(tid) != {cpu}:
                        os.sched_setaffinity(tid, {cpu})
                        moved += 1
                except ProcessLookupError:
                    continue  # the thread ended meanwhile
            if not moved:
                return

    def pause(self) -> None:
        if self.alive():
            os.killpg(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.alive():
            os.killpg(self.pid, signal.SIGCONT)

    def terminate(self) -> None:
        """Ask the child to exit (SIGTERM, once), noting how far its log had got."""
        self.sample_memory()
        if not self.alive() or self.log_bytes_at_stop is not None:
            return
        self.log_bytes_at_stop = 0
        try:
            self.log_bytes_at_stop = self.log_path.stat().st_size
        except OSError:
            pass
        try:
            os.killpg(self.pid, signal.SIGTERM)
            os.killpg(self.pid, signal.SIGCONT)  # a paused child must wake up to exit
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited after `timeout` s."""
        self.terminate()
        if self.popen.poll() is not None:
            return
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.popen.wait(timeout=5)


class Processes:
    """The registry of every child process the harness started."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.children: list[Child] = []
        self.stopped: list[Child] = []

    def spawn(
        self,
        name: str,
        args: list[str],
        env: dict[str, str],
        *,
        role: str,
        cpu: int | str = SERVER_CPU,
        stdout_path: Path | None = None,
    ) -> Child:
        """Start `args` pinned to `cpu` (a taskset list, such as "0,1"); output goes to
        `<name>.log` (stdout to `stdout_path` instead, if given)."""
        log_path = self.log_dir / f"{name}.log"
        runs = 1
        while log_path.exists():  # a restarted process gets its own log
            runs += 1
            log_path = self.log_dir / f"{name}.{runs}.log"
        log = log_path.open("ab")
        out = stdout_path.open("wb") if stdout_path is not None else log
        # Ctrl-C waits until the child is in the registry, so that it is sure to be stopped.
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            popen = subprocess.Popen(
                ["taskset", "-c", str(cpu), *args],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=log,
                start_new_session=True,  # own process group: Ctrl-C goes to the harness only
                preexec_fn=_child_setup,
            )
            child = Child(name if runs == 1 else f"{name}.{runs}", popen, log_path, role)
            self.children.append(child)
        finally:
            log.close()
            out.close()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        return child

    def stop(self, child: Child, timeout: float = 10.0) -> None:
        child.stop(timeout)
        if child in self.children:
            self.children.remove(child)
            self.stopped.append(child)

    def stop_many(self, children: list[Child], timeout: float = 10.0) -> None:
        """Stop several children at once: all get SIGTERM, then each is waited for."""
        for child in children:
            child.terminate()
        for child in children:
            self.stop(child, timeout)

    def stop_all(self) -> None:
        # Ctrl-C again while stopping must not leave children behind: ignore it meanwhile.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            children = list(reversed(self.children))
            for child in children:
                try:
                    child.terminate()
                except Exception:
                    pass
            for child in children:
                try:
                    self.stop(child)
                except Exception as exc:  # keep stopping the others
                    print(f"could not stop {child.name} (pid {child.pid}): {exc}", file=sys.stderr)
        finally:
            signal.signal(signal.SIGINT, previous)

    def sample_memory(self) -> None:
        for child in self.children:
            child.sample_memory()

    def log_problems(self) -> list[dict]:
        """ERROR lines and tracebacks in the children's logs (the product's own complaints)."""
        out = []
        for c in self.stopped + self.children:
            try:
                text = c.log_path.read_bytes().decode(errors="replace")
            except OSError:
                continue
            cut = len(text) if c.log_bytes_at_stop is None else c.log_bytes_at_stop
            entry = {"process": c.name, "role": c.role}
            for part, lines in (
                ("serving", text[:cut].splitlines()),
                ("shutdown", text[cut:].splitlines()),
            ):
                errors = [line for line in lines if " ERROR " in line or " CRITICAL " in line]
                kinds: dict[str, int] = {}
                for line in errors:
                    kind = line.split(" ERROR ", 1)[-1][:120]
                    kinds[kind] = kinds.get(kind, 0) + 1
                entry[part] = {
                    "error_lines": len(errors),
                    "tracebacks": sum(1 for line in lines if line.startswith("Traceback")),
                    "warning_lines": sum(1 for line in lines if " WARNING " in line),
                    "errors_by_message": kinds,
                }
            if any(
                v
                for part in ("serving", "shutdown")
                for k, v in entry[part].items()
                if k != "errors_by_message"
            ):
                out.append(entry)
        return out

    def memory_report(self) -> list[dict]:
        return [
            {"process": c.name, "role": c.role, "peak_rss_mib": round(c.peak_rss_kib / 1024, 1)}
            for c in self.stopped + self.children
            if c.peak_rss_kib
        ]


def run_checked(
    args: list[str], env: dict[str, str], *, timeout: float = 180, cpu: int | None = None
) -> str:
    """Run a short child to completion (pinned to `cpu` if given); its stdout, or RuntimeError."""
    prefix = ["taskset", "-c", str(cpu)] if cpu is not None else []
    try:
        result = subprocess.run(
            [*prefix, *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=_child_setup,
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{' '.join(args[:4])} timed out after {timeout} s") from exc
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:4])} failed ({result.returncode}):\n{result.stderr}")
    return result.stdout
