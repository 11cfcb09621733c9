"""Load phases on one setup's client: latency at concurrency 1, throughput at concurrency N, and the
CPU each process of the setup spent meanwhile."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import anyio
import psutil
from mcp import Client

from scripts.bench.stack import Setup

ARGS = {"text": "hello"}
CALL_TIMEOUT = 30.0


def pct(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def cpu_of(procs: list[psutil.Process]) -> float:
    return sum(cpu_split(procs))


def cpu_split(procs: list[psutil.Process]) -> tuple[float, float]:
    """(user, system) CPU seconds of the processes."""
    user = system = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            user, system = user + t.user, system + t.system
        except psutil.Error:
            pass
    return user, system


@dataclass
class Result:
    """Everything measured on one setup over all rounds."""

    latency_ms: list[float] = field(default_factory=list)
    throughput: dict[int, list[float]] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    """CPU seconds per role over all throughput phases."""
    sys_s: dict[str, float] = field(default_factory=dict)
    """Of which in the kernel (system time)."""
    tput_calls: int = 0
    errors: int = 0
    error_sample: str = ""

    def p50(self) -> float:
        return statistics.median(self.latency_ms) if self.latency_ms else float("nan")

    def p99(self) -> float:
        return pct(self.latency_ms, 0.99)

    def calls_per_s(self, concurrency: int) -> float:
        rounds = self.throughput.get(concurrency, [])
        return statistics.median(rounds) if rounds else float("nan")

    def sys_share(self, role: str) -> float:
        cpu = self.cpu_s.get(role, 0.0)
        return self.sys_s.get(role, 0.0) / cpu if cpu > 0 else float("nan")

    def cpu_ms_per_call(self, role: str) -> float:
        """CPU milliseconds per call = CPU seconds per 1,000 calls."""
        if not self.tput_calls or role not in self.cpu_s:
            return float("nan")
        return self.cpu_s[role] / self.tput_calls * 1000


async def call(client: Client, tool: str, result: Result) -> None:
    try:
        with anyio.fail_after(CALL_TIMEOUT):
            reply = await client.call_tool(tool, ARGS)
        if reply.is_error:
            raise RuntimeError(f"tool error: {reply.content}")
    except Exception as exc:  # a failed call is counted, the run goes on
        result.errors += 1
        result.error_sample = result.error_sample or repr(exc)[:300]


async def latency(setup: Setup, calls: int, result: Result) -> None:
    assert setup.client is not None
    for _ in range(calls):
        errors = result.errors
        t0 = time.perf_counter()
        await call(setup.client, setup.tool, result)
        if result.errors == errors:
            result.latency_ms.append((time.perf_counter() - t0) * 1000)


async def throughput(setup: Setup, calls: int, concurrency: int, result: Result) -> None:
    """`calls` calls by `concurrency` workers on the setup's one client; CPU charged per role."""
    assert setup.client is not None
    client = setup.client
    roles = {role: find() for role, find in setup.roles.items()}
    roles["client"] = [psutil.Process()]
    before = {role: cpu_split(procs) for role, procs in roles.items()}
    remaining = calls
    errors = result.errors

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call(client, setup.tool, result)

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    elapsed = time.perf_counter() - t0
    for role, procs in roles.items():
        user, system = cpu_split(procs)
        result.cpu_s[role] = result.cpu_s.get(role, 0.0) + user + system - sum(before[role])
        result.sys_s[role] = result.sys_s.get(role, 0.0) + system - before[role][1]
    ok = calls - (result.errors - errors)
    result.tput_calls += calls
    result.throughput.setdefault(concurrency, []).append(ok / elapsed)


async def warm_up(setup: Setup, calls: int) -> None:
    assert setup.client is not None
    await setup.client.list_tools()  # the 2026-07-28 client learns Mcp-Param maps from the listing
    scratch = Result()
    for _ in range(calls):
        await call(setup.client, setup.tool, scratch)
    if scratch.errors == calls:
        raise RuntimeError(f"{setup.name}: every warm-up call failed: {scratch.error_sample}")


@dataclass
class Noise:
    """How much CPU the rest of the machine (other people's tests...) used while a round ran."""

    t0: float
    busy0: float
    ours0: float
    steal0: float

    @staticmethod
    def steal() -> float:
        """CPU time the hypervisor gave to other guests while this one wanted it (0 on bare metal)."""
        return float(getattr(psutil.cpu_times(), "steal", 0.0))

    @staticmethod
    def busy() -> float:
        t = psutil.cpu_times()  # steal is time nobody here ran: reported apart (`steal`)
        return float(sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "steal", 0.0))

    @staticmethod
    def ours() -> float:
        me = psutil.Process()
        try:
            family = [me, *me.children(recursive=True)]
        except psutil.Error:
            family = [me]
        return cpu_of(family)

    @classmethod
    def start(cls) -> Noise:
        return cls(time.perf_counter(), cls.busy(), cls.ours(), cls.steal())

    def stolen_share(self) -> float:
        """Share of the machine's CPU capacity taken by the hypervisor (a noisy neighbour)."""
        elapsed = time.perf_counter() - self.t0
        return max(0.0, (self.steal() - self.steal0) / (elapsed * (psutil.cpu_count() or 1)))

    def foreign_share(self) -> float:
        """Share of the machine's CPU capacity used by processes other than the harness and its children."""
        elapsed = time.perf_counter() - self.t0
        foreign = (self.busy() - self.busy0) - (self.ours() - self.ours0)
        return max(0.0, foreign / (elapsed * (psutil.cpu_count() or 1)))
