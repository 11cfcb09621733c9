"""docs/benchmarks.md and docs/benchmarks.png from one run's results."""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts.bench.cpuprof import INTERVAL
from scripts.bench.extras import BIG_WIRE, Extras
from scripts.bench.floor import Floor
from scripts.bench.load import Result
from scripts.bench.spy import Profile
from scripts.bench.stack import RELAY, Setup

ROLES = ["client", "edge", "adapter", "nats-server", "backing server", "proxy"]
FEDMCP_OWN = ["edge", "adapter", "nats-server"]
MB = 1_000_000
KEEP = re.compile(r"<!-- keep:(?P<name>[a-z-]+) -->.*?<!-- /keep:(?P=name) -->", re.S)


@dataclass
class Run:
    setups: list[Setup]
    results: dict[str, Result]
    extras: Extras | None
    profiles: list[Profile] = field(default_factory=list)
    """py-spy's."""
    cpu_profiles: list[Profile] = field(default_factory=list)
    """The CPU-time sampler's (scripts/bench/cpuprof.py)."""
    profile_setup: str = ""
    profile_seconds: float = 0
    profile_native: bool = False
    machine: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    quick: bool = False
    foreign_cpu: list[float] = field(default_factory=list)
    """Per round: share of the machine's CPU used by processes outside the harness."""
    stolen_cpu: list[float] = field(default_factory=list)
    """Per round: share of the machine's CPU the hypervisor gave to other guests (steal time)."""
    floor: Floor | None = None

    def active(self) -> list[Setup]:
        return [s for s in self.setups if not s.unavailable]

    def result(self, name: str) -> Result | None:
        setup = next((s for s in self.setups if s.name == name), None)
        if setup is None or setup.unavailable:
            return None
        return self.results.get(name)


def fmt(value: float, digits: int = 2) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def ratio(a: float, b: float) -> str:
    if math.isnan(a) or math.isnan(b) or b == 0:
        return "n/a"
    return f"{a / b:.2f}x"


def paired(a: Result, b: Result, concurrency: int) -> str:
    """The ratio of a's calls/s to b's taken round by round (the two ran within seconds of each other in
    each round, so machine drift between rounds cancels out): median and range over the rounds."""
    xs, ys = a.throughput.get(concurrency, []), b.throughput.get(concurrency, [])
    if len(xs) != len(ys):  # a setup missed a round: the rounds no longer pair up
        return ""
    ratios = sorted(x / y for x, y in zip(xs, ys, strict=True) if y)
    if not ratios:
        return ""
    return f"; paired per round: {statistics.median(ratios):.2f}x, {ratios[0]:.2f}-{ratios[-1]:.2f}x"


def own_cpu(result: Result) -> float:
    parts = [result.cpu_ms_per_call(role) for role in FEDMCP_OWN]
    return sum(p for p in parts if not math.isnan(p)) if any(not math.isnan(p) for p in parts) else float("nan")


def total_cpu(result: Result) -> float:
    parts = [result.cpu_ms_per_call(role) for role in ROLES if role in result.cpu_s]
    return sum(parts) if parts else float("nan")


def best_peer(run: Run, concurrency: int) -> tuple[str, float]:
    best = ("", float("nan"))
    for s in run.active():
        if s.peer:
            value = run.results[s.name].calls_per_s(concurrency)
            if not math.isnan(value) and (math.isnan(best[1]) or value > best[1]):
                best = (s.name, value)
    return best


def best_peer_p50(run: Run) -> tuple[str, float]:
    best = ("", float("nan"))
    for s in run.active():
        if s.peer:
            value = run.results[s.name].p50()
            if not math.isnan(value) and (math.isnan(best[1]) or value < best[1]):
                best = (s.name, value)
    return best


def targets(run: Run) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) rows."""
    rows: list[tuple[str, str, str]] = []
    fed, direct, proxy = run.result("fedmcp"), run.result("direct-http"), run.result("mcp-proxy")

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("**pass**" if ok else "**FAIL**")

    if fed is not None and proxy is not None:
        a, b = fed.calls_per_s(16), proxy.calls_per_s(16)
        rows.append(
            (
                "standard path calls/s at c=16 >= 1.5x mcp-proxy",
                f"{a:.0f} vs {b:.0f} ({ratio(a, b)}{paired(fed, proxy, 16)})",
                verdict(a >= 1.5 * b),
            )
        )
    else:
        rows.append(("standard path calls/s at c=16 >= 1.5x mcp-proxy", "mcp-proxy not measured", "n/a"))
    if fed is not None and direct is not None:
        a, b = fed.calls_per_s(16), direct.calls_per_s(16)
        rows.append(
            (
                "standard path calls/s at c=16 >= 0.8x direct HTTP",
                f"{a:.0f} vs {b:.0f} ({ratio(a, b)}{paired(fed, direct, 16)})",
                verdict(a >= 0.8 * b),
            )
        )
        p, q = fed.p50(), direct.p50()
        rows.append(
            (
                "standard path p50 at c=1 <= direct HTTP p50 + 1.5 ms",
                f"{p:.2f} ms vs {q:.2f} ms (+{p - q:.2f} ms)",
                verdict(p <= q + 1.5),
            )
        )
    if fed is not None:
        own = own_cpu(fed)
        parts = ", ".join(f"{r} {fmt(fed.cpu_ms_per_call(r), 3)}" for r in FEDMCP_OWN)
        rows.append(
            (
                "fedmcp own CPU (edge+adapter+nats-server) <= 0.8 ms per call",
                f"{own:.3f} ms ({parts})",
                verdict(own <= 0.8),
            )
        )
    ex = run.extras
    if ex is not None and ex.join_ms:
        misses = f", {ex.join_misses} missed" if ex.join_misses else ""
        rows.append(
            (
                "list_changed p99 after an adapter joins < 250 ms",
                f"p99 {ex.join_p99():.0f} ms over {len(ex.join_ms)} joins{misses}",
                verdict(ex.join_p99() < 250 and not ex.join_misses),
            )
        )
    else:
        rows.append(("list_changed p99 after an adapter joins < 250 ms", "not measured", "n/a"))
    if ex is not None and ex.sessions_opened:
        full = ex.sessions_wanted >= 10_000 and ex.sessions_opened >= 10_000
        rows.append(
            (
                "10,000 idle handshake-era sessions: edge RSS < 200 MB",
                f"{ex.rss_idle / MB:.0f} MB with {ex.sessions_opened} sessions once idle "
                f"({ex.rss_after / MB:.0f} MB right after opening them)",
                verdict(ex.rss_idle < 200 * MB) if full else "n/a (fewer sessions)",
            )
        )
    else:
        rows.append(("10,000 idle handshake-era sessions: edge RSS < 200 MB", "not measured", "n/a"))
    big = next((b for b in ex.big if b.name == "fedmcp" and b.seconds), None) if ex is not None else None
    if big is not None:
        growth = big.edge_growth
        rows.append(
            (
                "50 MB resource read: edge RSS growth < 2x payload",
                f"peak +{growth / MB:.0f} MB for {BIG_WIRE / MB:.0f} MB ({growth / BIG_WIRE:.2f}x)",
                verdict(growth < 2 * BIG_WIRE and big.ok),
            )
        )
    else:
        rows.append(("50 MB resource read: edge RSS growth < 2x payload", "not measured", "n/a"))
    return rows


def spread(r: Result, concurrency: int) -> str:
    """Median calls/s over the rounds, with the slowest and fastest round."""
    rounds = r.throughput.get(concurrency, [])
    if not rounds:
        return "n/a"
    return f"{r.calls_per_s(concurrency):.0f} ({min(rounds):.0f}-{max(rounds):.0f})"


def results_table(run: Run) -> list[str]:
    direct = run.result("direct-http")
    peer16, peer16_v = best_peer(run, 16)
    out = [
        "| setup | era | p50 ms (c=1) | p99 ms (c=1) | calls/s c=16 (round min-max) | calls/s c=64 (round min-max) | errors | c=16 vs direct HTTP | c=64 vs direct HTTP | p50 vs direct HTTP | c=16 vs best peer |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in run.setups:
        if s.unavailable:
            out.append(f"| {s.name} | unavailable | | | | | | | | | |")
            continue
        r = run.results[s.name]
        d16 = ratio(r.calls_per_s(16), direct.calls_per_s(16)) if direct else "n/a"
        d64 = ratio(r.calls_per_s(64), direct.calls_per_s(64)) if direct else "n/a"
        dp = f"{r.p50() - direct.p50():+.2f} ms" if direct else "n/a"
        bp = ratio(r.calls_per_s(16), peer16_v) if peer16 else "n/a"
        out.append(
            f"| {s.name} | {s.era} | {fmt(r.p50())} | {fmt(r.p99())} | {spread(r, 16)} | "
            f"{spread(r, 64)} | {r.errors} | {d16} | {d64} | {dp} | {bp} |"
        )
    if peer16:
        out.append("")
        out.append(
            f"Best peer at c=16: **{peer16}** ({peer16_v:.0f} calls/s); best peer p50: **{best_peer_p50(run)[0]}**."
        )
    return out


def floor_table(run: Run) -> list[str]:
    """The frameworks' floor (scripts/bench/floor.py) beside what the fedmcp services cost."""
    f = run.floor
    if f is None:
        return []

    def cost(costs: dict[int, Any], c: int, i: int) -> str:
        return fmt(costs[c].cpu_ms[i], 3) if c in costs else "n/a"

    def rate(costs: dict[int, Any], c: int) -> str:
        return fmt(costs[c].rate, 0) if c in costs else "n/a"

    lines = [
        "| stand-in | process | CPU ms/call c=1 | CPU ms/call c=16 | calls/s c=1 | calls/s c=16 |",
        "|---|---|---:|---:|---:|---:|",
        f"| http: the edge's HTTP stack (uvicorn, httptools, uvloop), a canned tools/call answer | server "
        f"| {cost(f.http, 1, 0)} | {cost(f.http, 16, 0)} | {rate(f.http, 1)} | {rate(f.http, 16)} |",
        f"| bus: a nats-py responder, a canned result with the adapter's reply headers | responder "
        f"| {cost(f.bus, 1, 0)} | {cost(f.bus, 16, 0)} | {rate(f.bus, 1)} | {rate(f.bus, 16)} |",
        f"| | nats-server | {cost(f.bus, 1, 1)} | {cost(f.bus, 16, 1)} | | |",
    ]
    return lines + [f"- {note}" for note in f.notes]


def cpu_table(run: Run) -> list[str]:
    out = [
        "| setup | " + " | ".join(ROLES) + " | total | fedmcp own (edge+adapter+nats) |",
        "|---|" + "---:|" * (len(ROLES) + 2),
    ]
    for s in run.active():
        r = run.results[s.name]
        cells = [fmt(r.cpu_ms_per_call(role), 3) if role in r.cpu_s else "" for role in ROLES]
        own = fmt(own_cpu(r), 3) if "edge" in s.roles else ""
        out.append(f"| {s.name} | " + " | ".join(cells) + f" | {fmt(total_cpu(r), 3)} | {own} |")
    return out


def over_floor(run: Run) -> list[str]:
    """What fedmcp's code adds to its architecture's cost: the standard path against relay-floor."""
    fed, relay, direct = run.result("fedmcp"), run.result(RELAY), run.result("direct-http")
    if fed is None or relay is None or direct is None:
        return []
    roles = [role for role in ROLES if role in fed.cpu_s and role in relay.cpu_s]
    gaps = ", ".join(f"{role} {fed.cpu_ms_per_call(role) - relay.cpu_ms_per_call(role):+.3f}" for role in roles)
    return [
        f"Over the floor of its architecture ({RELAY}, which runs at {ratio(relay.calls_per_s(16), direct.calls_per_s(16))} "
        f"direct HTTP at c=16 and {fmt(relay.p50() - direct.p50())} ms over its p50), fedmcp's code costs "
        f"{total_cpu(fed) - total_cpu(relay):+.3f} ms of CPU per call: {gaps} (ms per call)."
    ]


def sys_table(run: Run) -> list[str]:
    out = ["| setup | " + " | ".join(ROLES) + " |", "|---|" + "---:|" * len(ROLES)]
    for s in run.active():
        r = run.results[s.name]
        cells = [f"{r.sys_share(role):.0%}" if role in r.cpu_s and r.cpu_s[role] > 0 else "" for role in ROLES]
        out.append(f"| {s.name} | " + " | ".join(cells) + " |")
    return out


def extras_table(ex: Extras) -> list[str]:
    out = ["| measurement | result |", "|---|---|"]
    if ex.join_ms:
        out.append(
            f"| adapter joins -> handshake-era client's notifications/tools/list_changed | "
            f"p50 {ex.join_p50():.0f} ms, p99 {ex.join_p99():.0f} ms, max {max(ex.join_ms):.0f} ms over "
            f"{len(ex.join_ms)} joins ({ex.join_misses} missed) |"
        )
    if ex.sessions_opened:
        per = (ex.rss_after - ex.rss_before) / max(ex.sessions_opened, 1) / 1000
        out.append(
            f"| edge RSS, {ex.sessions_opened} idle handshake-era sessions | {ex.rss_before / MB:.0f} MB before -> "
            f"{ex.rss_after / MB:.0f} MB right after opening ({per:.1f} kB per session), "
            f"{ex.rss_idle / MB:.0f} MB once idle past the edge's local idle timeout; opened in {ex.sessions_seconds:.1f} s "
            f"({ex.sessions_opened / max(ex.sessions_seconds, 1e-9):.0f}/s); still alive afterwards: {ex.sessions_alive} sampled |"
        )
    for b in ex.big:
        what = f"50 MB resource read ({BIG_WIRE / MB:.0f} MB base64 of a 37.5 MB blob), {b.name}: {b.description}"
        if b.error or not b.seconds:
            out.append(f"| {what} | failed: {b.error} |")
            continue
        times = ", ".join(f"{t:.2f}" for t in b.seconds)
        cell = f"{times} s per read; intact: {'yes' if b.ok else 'NO'}"
        if b.edge_peak:
            cell += (
                f"; edge RSS {b.edge_before / MB:.0f} MB -> peak {b.edge_peak / MB:.0f} MB "
                f"(+{b.edge_growth / MB:.0f} MB, {b.edge_growth / BIG_WIRE:.2f}x payload) -> {b.edge_after / MB:.0f} MB "
                f"2 s after; adapter peak +{b.adapter_peak_growth / MB:.0f} MB"
            )
        out.append(f"| {what} | {cell} |")
    for note in ex.notes:
        out.append(f"| note | {note} |")
    return out


def profile_tables(prof: Profile, top: int, *, what: str) -> list[str]:
    out: list[str] = []
    if prof.error or not prof.samples:
        return [f"{what} failed: `{prof.error.strip()[:300]}`", ""]
    out += ["By library (self time of the top frame; C code counted to its Python caller's library):", ""]
    out += ["| library | share |", "|---|---:|"]
    out += [f"| {name} | {prof.share(n):.1%} |" for name, n in prof.categories.most_common(14)]
    out += ["", "By task (what the event loop was running):", "", "| task | share |", "|---|---:|"]
    out += [f"| `{name}` | {prof.share(n):.1%} |" for name, n in prof.roots.most_common(8)]
    out += ["", "Top functions by self time:", "", "| function | self | incl. |", "|---|---:|---:|"]
    for name, n in prof.self_.most_common(top):
        out.append(f"| `{name}` | {prof.share(n):.1%} | {prof.share(prof.inclusive[name]):.1%} |")
    out += ["", "fedmcp functions by inclusive time:", "", "| function | incl. | self |", "|---|---:|---:|"]
    ours = [(k, v) for k, v in prof.inclusive.most_common() if k.startswith("fedmcp/") and v < 0.99 * prof.samples]
    for name, n in ours[:top]:
        out.append(f"| `{name}` | {prof.share(n):.1%} | {prof.share(prof.self_[name]):.1%} |")
    out.append("")
    return out


def profile_section(run: Run, top: int = 15) -> list[str]:
    out = [
        f"Both profiles ran after the measured rounds, each for {run.profile_seconds:.0f} s of back-to-back "
        f"throughput phases at c=16 on the `{run.profile_setup}` setup. *Self* = samples with the function on "
        "top of the stack; *incl.* = samples with it anywhere on the stack. Raw stacks (collapsed format, for "
        "flame graphs): `.bench/profiles/`.",
        "",
    ]
    if run.cpu_profiles:
        out += [
            "### CPU-time profile (the numbers to act on)",
            "",
            "`scripts/bench/cpuprof.py` wraps the edge and the adapter process and samples the Python stack on "
            f"every {INTERVAL * 1000:.0f} ms of the process's CPU time (ITIMER_PROF), so the shares are shares of "
            "its CPU, user and kernel. Time in C code (uvloop, syscalls, pydantic-core) is counted to the Python "
            "function that called it.",
            "",
        ]
        for prof in run.cpu_profiles:
            seconds = prof.samples * INTERVAL
            cover = f" of {prof.cpu_seconds:.1f} s used (psutil)" if prof.cpu_seconds else ""
            out += [f"#### {prof.role} ({prof.samples} samples = {seconds:.1f} s CPU{cover})", ""]
            out += profile_tables(prof, top, what="the CPU-time profile")
    if run.profiles:
        mode = "`record --native --rate 100`" if run.profile_native else "`record --rate 100`"
        out += [
            "### py-spy",
            "",
            f"py-spy ({mode}) on the same processes. py-spy samples wall-clock time of threads it deems active: "
            "on this machine it counts a thread blocked in uvloop's `epoll_pwait` as active (with --native those "
            "samples are dropped here as idle) and a thread that is runnable but not running, e.g. preempted "
            "right after a socket write woke its peer on a busy 2-CPU machine, as running. So it over-weights "
            "syscalls that wake other processes: compare its socket-write share with the kernel share of CPU "
            "above (psutil system time). Kept for its native frames.",
            "",
        ]
        for prof in run.profiles:
            idle = f", {prof.idle} idle samples dropped" if prof.native else ""
            out += [f"#### {prof.role} ({prof.samples} samples{idle})", ""]
            out += profile_tables(prof, 10, what="py-spy")
    return out


def plot(run: Run, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    active = run.active()
    names = [s.name for s in active]
    res = [run.results[n] for n in names]
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.5))
    x = range(len(names))
    w = 0.4
    ax = axes[0]
    ax.bar([i - w / 2 for i in x], [r.calls_per_s(16) for r in res], w, label="c=16")
    ax.bar([i + w / 2 for i in x], [r.calls_per_s(64) for r in res], w, label="c=64")
    ax.set_title("throughput (calls/s, higher is better)")
    ax.legend()
    ax = axes[1]
    ax.bar([i - w / 2 for i in x], [r.p50() for r in res], w, label="p50")
    ax.bar([i + w / 2 for i in x], [r.p99() for r in res], w, label="p99")
    ax.set_title("latency at c=1 (ms, lower is better)")
    ax.legend()
    ax = axes[2]
    bottom = [0.0] * len(names)
    for role in ROLES:
        values = [r.cpu_ms_per_call(role) if role in r.cpu_s else 0.0 for r in res]
        values = [0.0 if math.isnan(v) else v for v in values]
        if any(values):
            ax.bar(list(x), values, 0.6, bottom=bottom, label=role)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_title("CPU ms per call by process (lower is better)")
    ax.legend(fontsize=8)
    for ax in axes:
        ax.set_xticks(list(x))
        ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(
        f"fedmcp benchmarks, {run.machine.get('date', '')}, {run.machine.get('cpu', '')} x{run.machine.get('nproc', '')}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(run: Run, previous: str = "") -> str:
    """The whole document; `<!-- keep:NAME -->` blocks of `previous` survive (hand-written analysis)."""
    kept = {m["name"]: m[0] for m in KEEP.finditer(previous)}
    m = run.machine
    lines = [
        "# Benchmarks",
        "",
        "Generated by `scripts/bench/run.py` (see *How to run*); the tables and the plot are rewritten on every run, "
        "the text in `keep` blocks is carried over. Numbers from one run on one machine: for comparing setups "
        "measured side by side, not absolute capacity. The harness is never run in CI.",
        "",
        f"- date: {m.get('date', '')}",
        f"- machine: {m.get('nproc', '')} CPUs ({m.get('cpu', '')}), {m.get('memory', '')} RAM, {m.get('os', '')}",
        f"- software: {m.get('software', '')}",
        f"- parameters: {', '.join(f'{k} {v}' for k, v in run.params.items())}",
        f"- other load on the machine during the rounds (CPU share used by processes outside the harness, "
        f"per round): {', '.join(f'{x:.0%}' for x in run.foreign_cpu) or 'n/a'}",
        f"- CPU taken by the hypervisor for other guests during the rounds (steal time, per round): "
        f"{', '.join(f'{x:.0%}' for x in run.stolen_cpu) or 'n/a'}",
        "",
        "## How to run",
        "",
        "```",
        "# the bench dependency group (matplotlib, psutil) is not part of the dev/CI install; --group adds it",
        "uv run --group bench python scripts/bench/run.py           # full run (~6 min): docs/benchmarks.md + .png",
        "uv run --group bench python scripts/bench/run.py --quick   # < 1 min: direct HTTP, fedmcp, relay floor; printed only",
        "uv run --group bench python scripts/bench/run.py --help    # rounds, calls, extras, profiling, --only",
        "# before/after in one run: another revision's checkout (uv sync there) measured as fedmcp-base",
        "git worktree add /tmp/base HEAD~1 && (cd /tmp/base && uv sync --locked)",
        "uv run --group bench python scripts/bench/run.py --quick --baseline /tmp/base",
        "```",
        "",
        "Timings on a shared VM swing by tens of percent from one minute to the next, so a before/after "
        "from two separate runs says little; `--baseline` interleaves the two revisions round by round.",
        "",
        "The peers (mcp-proxy, fastmcp) and py-spy are installed by the harness into their own venvs under "
        "`.bench/venvs/` (ignored by git); a peer that cannot be installed is reported as unavailable.",
        "",
        "## Setups",
        "",
        'Every setup calls the demo server\'s `echo` tool (`{"text": "hello"}`) through one long-lived SDK `Client` '
        "session (the SDK of this repo, `cache=None`); the load runs in the harness process (the *client* column). "
        "Setups are measured round-robin, one round at a time (rotating the order each round), so machine drift "
        "hits them alike; each number is the median over rounds (latency percentiles over all samples).",
        "",
        "| setup | path | era spoken |",
        "|---|---|---|",
    ]
    for s in run.setups:
        lines.append(f"| {s.name} | {s.description or '-'} | {s.era or ('unavailable: ' + s.unavailable)} |")
    lines += ["", "## Latency and throughput", "", *results_table(run), ""]
    lines += [
        "Reading these numbers: the machine has 2 CPUs, shared by the load generator (one Python process), the "
        "backing server, every proxy and other people's work (see *other load* above). At c=16 and c=64 a setup is "
        "bound by CPU: the direct setups by the single-threaded client, the fedmcp setups by the total CPU per call "
        "(the *total* column below times calls/s comes to about 2 CPUs). So throughput ratios mostly restate CPU per "
        "call, and they move by tens of percent from run to run (the min-max of the rounds shows it); CPU per call "
        "is the steadier measure. At c=1 the path is serial, so p50 is roughly the sum of the CPU per call of every "
        "process on the path.",
        "",
    ]
    lines += [
        "## CPU per call",
        "",
        "CPU milliseconds per call (= CPU seconds per 1,000 calls), from /proc CPU time deltas (psutil, user+system) "
        "of each process over the throughput phases (c=16 and c=64 together). *backing server* is the demo server "
        "(for stdio setups the child of the adapter, proxy or client).",
        "",
        *cpu_table(run),
        "",
        *over_floor(run),
        "",
        "Share of that CPU spent in the kernel (system time: syscalls, loopback TCP, pipes, scheduling):",
        "",
        *sys_table(run),
        "",
    ]
    if run.floor is not None:
        lines += [
            "## The frameworks' floor",
            "",
            "What the edge's HTTP server and a bus client cost on their own, measured after the rounds on the same "
            "machine (`scripts/bench/floor.py`): the part of the edge's and the adapter's CPU per call that no "
            "fedmcp code adds. At c=1 every message is a wakeup of its own (syscalls, a loop iteration, cold "
            "caches); at c=16 the stand-ins answer thousands of calls a second and nats-py and nats-server "
            "coalesce the writes of messages queued together, so the cost per call drops 4-10x. The fedmcp "
            "processes run in between: 16 calls in flight over five processes leave little to coalesce.",
            "",
            *floor_table(run),
            "",
        ]
    if run.extras is not None:
        lines += ["## Catalog changes, idle sessions, large payloads", "", *extras_table(run.extras), ""]
    lines += ["## Acceptance targets", "", "| target | measured | verdict |", "|---|---|---|"]
    lines += [f"| {t} | {m_} | {v} |" for t, m_, v in targets(run)]
    lines += ["", "![benchmarks](benchmarks.png)", "", "## Where the time goes", ""]
    lines += [
        kept.get(
            "analysis", "<!-- keep:analysis -->\n(analysis of the profiles: written by hand)\n<!-- /keep:analysis -->"
        ),
        "",
    ]
    if run.profiles or run.cpu_profiles:
        lines += ["<!-- keep:profiles -->", *profile_section(run), "<!-- /keep:profiles -->"]
    elif "profiles" in kept:
        lines += [kept["profiles"]]
    lines.append("")
    return "\n".join(lines)


def console(run: Run) -> str:
    lines = [
        f"{'setup':<20} {'era':<11} {'p50 ms':>8} {'p99 ms':>8} {'c=16/s':>8} {'c=64/s':>8} {'CPU ms/call':>11} {'err':>4}"
    ]
    for s in run.setups:
        if s.unavailable:
            lines.append(f"{s.name:<20} unavailable: {s.unavailable[:90]}")
            continue
        r = run.results[s.name]
        lines.append(
            f"{s.name:<20} {s.era:<11} {fmt(r.p50()):>8} {fmt(r.p99()):>8} {fmt(r.calls_per_s(16), 0):>8} "
            f"{fmt(r.calls_per_s(64), 0):>8} {fmt(total_cpu(r), 3):>11} {r.errors:>4}"
        )
    cpu = ["", "CPU ms per call: " + ", ".join(ROLES)]
    for s in run.active():
        r = run.results[s.name]
        cpu.append(
            f"  {s.name:<20} "
            + "  ".join(
                f"{role}={fmt(r.cpu_ms_per_call(role), 3)} ({r.sys_share(role):.0%} sys)"
                for role in ROLES
                if role in r.cpu_s
            )
        )
    lines += [*cpu, "", *over_floor(run)]
    if run.floor is not None:
        lines += ["", *floor_table(run)]
    if run.extras is not None:
        lines += ["", *extras_table(run.extras)]
    lines += ["", "targets:"] + [f"  [{v.strip('*')}] {t}: {m_}" for t, m_, v in targets(run)]
    return "\n".join(lines)
