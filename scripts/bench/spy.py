"""py-spy profiles of running fedmcp processes under load, summarised: where the CPU goes.

py-spy leaves out threads it sees idle, but it counts an event loop blocked in uvloop's epoll_pwait as
active; with --native those samples are recognised by their native leaf and dropped, so that a function's
share of the remaining samples is its share of the process's CPU (kernel time of syscalls included)."""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*)\)$")

CATEGORIES: list[tuple[str, str]] = [
    ("fedmcp/", "fedmcp code"),
    ("scripts/bench/", "bench servers"),
    ("mcp/", "MCP SDK (mcp)"),
    ("mcp_types/", "MCP SDK (mcp_types)"),
    ("pydantic", "pydantic"),
    ("starlette/", "starlette"),
    ("uvicorn/", "uvicorn"),
    ("h11/", "h11"),
    ("httptools", "httptools"),
    ("sse_starlette/", "sse-starlette"),
    ("nats/", "nats-py"),
    ("msgspec", "msgspec"),
    ("anyio/", "anyio"),
    ("asyncio/", "asyncio"),
    ("structlog/", "structlog"),
    ("opentelemetry/", "opentelemetry"),
    ("prometheus_client/", "prometheus_client"),
    ("json/", "json (stdlib)"),
    ("logging/", "logging (stdlib)"),
    ("uuid", "uuid"),
    ("httpx", "httpx2"),
]


IDLE_SYMBOLS = {"epoll_wait", "epoll_pwait", "epoll_pwait2", "poll", "ppoll", "select", "pselect6"}
"""Native leaves that mean waiting: py-spy counts a thread blocked in them as active, so they are dropped."""
IDLE_MARKERS = ("futex", "pthread_cond_", "sem_wait", "sem_timedwait", "nanosleep", "clock_nanosleep")
KERNEL = {
    "write": "kernel: socket and pipe writes",
    "writev": "kernel: socket and pipe writes",
    "send": "kernel: socket and pipe writes",
    "sendmsg": "kernel: socket and pipe writes",
    "sendto": "kernel: socket and pipe writes",
    "__libc_write": "kernel: socket and pipe writes",
    "read": "kernel: socket and pipe reads",
    "readv": "kernel: socket and pipe reads",
    "recv": "kernel: socket and pipe reads",
    "recvfrom": "kernel: socket and pipe reads",
    "__libc_read": "kernel: socket and pipe reads",
    "getpid": "kernel: getpid() (CPython 3.11 asyncio get_running_loop checks the pid)",
    "gc_collect_main": "CPython cyclic garbage collector",
}


def category(frame: str) -> str:
    """The library a Python frame ("file:function") belongs to. Under uvloop the event loop is C code
    called from Runner.run."""
    if frame.endswith("asyncio/runners.py:Runner.run"):
        return "event loop (uvloop C code)"
    for needle, name in CATEGORIES:
        if needle in frame.split(":", 1)[0]:
            return name
    return "other (stdlib, C)"


@dataclass
class Profile:
    """One process's samples, aggregated by function."""

    role: str
    samples: int = 0
    idle: int = 0
    """Samples dropped as waiting (native mode only; without --native, waiting inside uvloop shows as Runner.run)."""
    native: bool = False
    cpu_seconds: float = 0.0
    """CPU time of the process over the profile (psutil), to check what share of it the samples cover."""
    self_: Counter[str] = field(default_factory=Counter)
    inclusive: Counter[str] = field(default_factory=Counter)
    categories: Counter[str] = field(default_factory=Counter)
    roots: Counter[str] = field(default_factory=Counter)
    """By task: the first frame the event loop runs (an HTTP request, the NATS flusher, ...)."""
    error: str = ""

    def share(self, n: int) -> float:
        return n / self.samples if self.samples else 0.0


def short(path: str) -> str:
    """fedmcp/edge/server.py, mcp/client/stdio.py, asyncio/streams.py: the import path of a file."""
    for marker in ("site-packages/", "/src/"):
        if marker in path:
            return path.rsplit(marker, 1)[1]
    m = re.search(r"/lib/python3\.\d+/(.*)$", path)
    if m:
        return m[1]
    if "/scripts/bench/" in path:
        return "scripts/bench/" + path.rsplit("/scripts/bench/", 1)[1]
    return path


def frame_name(frame: str) -> tuple[str, str, bool]:
    """("fedmcp/edge/server.py:FederatedServer._forward", file, is_python) from py-spy's "func (file)"."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip(), "", False
    file = m["file"]
    python = file.endswith(".py") or file.startswith("<frozen")
    if not python:
        return m["func"], file, False
    file = short(file)
    return f"{file}:{m['func']}", file, True


def parse(raw: str, role: str, native: bool = False) -> Profile:
    prof = Profile(role, native=native)
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [frame_name(f) for f in stack.split(";") if f]
        frames = [f for f in frames if f[1] and not f[0].startswith("0x")]  # thread labels, bare addresses
        if not frames:
            continue
        leaf, _, leaf_python = frames[-1]
        if not leaf_python and (leaf in IDLE_SYMBOLS or any(m in leaf for m in IDLE_MARKERS)):
            prof.idle += n
            continue
        python = [name for name, _, is_py in frames if is_py]
        caller = python[-1] if python else "?"
        prof.samples += n
        if leaf_python:
            prof.self_[leaf] += n
            prof.categories[category(leaf)] += n
        else:
            prof.self_[f"{leaf} [C, in {caller}]"] += n
            prof.categories[KERNEL.get(leaf) or category(caller)] += n
        for name in set(python):
            prof.inclusive[name] += n
        prof.roots[task_root(python)] += n
    return prof


_WRAPPERS = ("TaskHandle._run_coro", "task_done", "_call_in_runner_task")


def task_root(python: list[str]) -> str:
    """The coroutine a sample's task started from: the frame after the event loop's Runner.run."""
    for i, name in enumerate(python):
        if name.endswith("asyncio/runners.py:Runner.run"):
            rest = [f for f in python[i + 1 :] if not any(w in f for w in _WRAPPERS)]
            return rest[0] if rest else "(the event loop itself: uvloop C code)"
    return python[0] if python else "?"


def start(
    py_spy: Path, pid: int, seconds: float, out: Path, rate: int = 100, native: bool = False
) -> subprocess.Popen[bytes]:
    args = [str(py_spy), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(rate)]
    args += ["--format", "raw", "--nolineno", "--full-filenames", "--output", str(out)]
    if native:
        args.append("--native")
    log = out.with_suffix(".log").open("wb")
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen[bytes], out: Path, role: str, native: bool = False, timeout: float = 60) -> Profile:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    if not out.exists():
        log = out.with_suffix(".log")
        return Profile(role, error=log.read_text()[-500:] if log.exists() else "py-spy wrote nothing")
    return parse(out.read_text(), role, native=native)
