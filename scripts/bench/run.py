"""fedmcp benchmark harness: fedmcp against direct MCP and against peer proxies, on this machine.

Setups (all alive at once, measured round-robin so machine drift hits them alike):
  direct-stdio        SDK client over stdio to the demo server
  direct-http         SDK client (2026-07-28) -> demo server over Streamable HTTP
  direct-http-legacy  the same with a handshake-era (2025-11-25) client
  fedmcp              SDK client (2026-07-28) -> edge -> NATS -> adapter -> demo server (stdio)
  fedmcp-legacy       the same with a handshake-era client
  fedmcp-httpback     the same, the adapter reaching the demo server over Streamable HTTP
  relay-floor         fedmcp's hops with none of its work (scripts/bench/relay.py): the architecture's floor
  mcp-proxy           PyPI mcp-proxy fronting the stdio demo server (own venv under .bench/venvs)
  fastmcp-proxy       PyPI fastmcp create_proxy fronting the stdio demo server (own venv)
Metrics: p50/p99 at concurrency 1, calls/s at 16 and 64, CPU ms per call of every process; then
list_changed latency after adapter joins, edge RSS with 10,000 idle handshake-era sessions, a 50 MB
resource read; then py-spy profiles of the edge and the adapter under load.

    uv sync --group bench
    uv run python scripts/bench/run.py            # full (~6 min), writes docs/benchmarks.md + .png
    uv run python scripts/bench/run.py --quick    # < 1 min, direct-http, fedmcp and relay-floor, printed
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `scripts.bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import anyio
import anyio.abc
import psutil
from fedmcp.shared.natsserver import binary as nats_binary

from scripts.bench import extras as extras_mod
from scripts.bench import floor as floor_mod
from scripts.bench import load, report, spy
from scripts.bench.stack import ROOT, Setup, Stack, ensure_venvs, peer_version, state_dir, tools_venv

CONCURRENCY = (16, 64)
T0 = time.perf_counter()


def clock() -> str:
    return f"{time.perf_counter() - T0:6.1f}s"


def machine(peers: dict[str, Path | str]) -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        nats_version = subprocess.run([nats_binary(), "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        nats_version = "?"
    from importlib.metadata import version

    software = [f"Python {platform.python_version()}", f"mcp {version('mcp')}", nats_version.strip() or "nats-server ?"]
    for peer, dist in (("mcp-proxy", "mcp-proxy"), ("fastmcp-proxy", "fastmcp")):
        where = peers.get(peer)
        if isinstance(where, Path):
            software.append(f"{dist} {peer_version(where, dist)} (with mcp {peer_version(where, 'mcp')})")
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "software": ", ".join(software),
    }


async def measure(args: argparse.Namespace, stack: Stack, run: report.Run) -> None:
    peers: dict[str, Path | str] = {}
    if not args.quick:
        print("peers: making venvs under .bench/venvs ...", flush=True)
        peers = await anyio.to_thread.run_sync(ensure_venvs, ["mcp-proxy", "fastmcp-proxy"])
    run.machine = machine(peers)
    print(f"[{clock()}] starting processes ...", flush=True)
    setups = await stack.start(args.quick, peers)
    if args.only:
        wanted = set(args.only.split(","))
        setups = [s for s in setups if s.name in wanted]
    run.setups = setups
    run.results = {s.name: load.Result() for s in setups}
    stop = anyio.Event()
    async with anyio.create_task_group() as holders:
        for s in setups:
            if s.unavailable:
                print(f"  {s.name}: unavailable ({s.unavailable})", flush=True)
                continue
            try:
                with anyio.fail_after(60):
                    await holders.start(hold, s, stop)
                    await load.warm_up(s, args.warmup)
                print(f"  {s.name}: ready, era {s.era}", flush=True)
            except Exception as exc:
                s.unavailable = f"failed to connect or warm up: {exc!r}"[:300]
                print(f"  {s.name}: {s.unavailable}", flush=True)
        active = [s for s in setups if not s.unavailable]
        for rnd in range(args.rounds):
            shift = rnd % max(1, len(active))
            order = active[shift:] + active[:shift]
            t0 = time.perf_counter()
            noise = load.Noise.start()
            for s in order:
                result = run.results[s.name]
                await load.latency(s, args.latency_calls, result)
                for c in CONCURRENCY:
                    await load.throughput(s, args.throughput_calls, c, result)
            run.foreign_cpu.append(noise.foreign_share())
            run.stolen_cpu.append(noise.stolen_share())
            print(
                f"[{clock()}] round {rnd + 1}/{args.rounds} done in {time.perf_counter() - t0:.1f}s "
                f"(CPU used by other processes on the machine: {run.foreign_cpu[-1]:.0%}, "
                f"taken by the hypervisor: {run.stolen_cpu[-1]:.0%})",
                flush=True,
            )
        if args.profile_seconds > 0:
            target = next((s for s in active if s.name == args.profile_setup), None)
            if target is not None:
                await profile(args.profile_seconds, target, stack, run, native=args.profile_native)
        stop.set()
    if args.floor:
        print(f"[{clock()}] the frameworks' floor: {args.floor} calls each ...", flush=True)
        run.floor = floor_mod.Floor()
        try:
            await floor_mod.measure(stack, args.floor, run.floor)
        except Exception as exc:
            run.floor.notes.append(f"floor measurement failed: {exc!r}"[:300])
    if args.joins or args.sessions or args.big_reads:
        ex = extras_mod.Extras()
        run.extras = ex
        if args.joins:
            print(f"[{clock()}] list_changed: {args.joins} adapter joins ...", flush=True)
            await extras_mod.list_changed_after_join(stack, args.joins, ex)
        if args.big_reads:
            print(f"[{clock()}] 50 MB read x{args.big_reads} ...", flush=True)
            try:
                await extras_mod.big_read(stack, args.big_reads, ex)
            except Exception as exc:
                ex.notes.append(f"50 MB read failed: {exc!r}"[:300])
        if args.sessions:
            print(f"[{clock()}] {args.sessions} idle handshake-era sessions ...", flush=True)
            with anyio.fail_after(60 + args.sessions * 0.05):
                await extras_mod.idle_sessions(stack, args.sessions, ex)


async def hold(setup: Setup, stop: anyio.Event, *, task_status: anyio.abc.TaskStatus[None]) -> None:
    """Own one setup's client session in a task of its own (so that a connect timeout can cancel it)."""
    async with AsyncExitStack() as stack:
        await setup.connect(stack)
        task_status.started()
        await stop.wait()


async def profile(seconds: float, target: Setup, stack: Stack, run: report.Run, native: bool = True) -> None:
    """Two profiles of the edge and the adapter, each over `seconds` of c=16 load on `target`: first the
    CPU-time sampler (scripts/bench/cpuprof.py, CPU-weighted), then py-spy."""
    out_dir = stack.work / "profiles"
    out_dir.mkdir(exist_ok=True)
    keep = state_dir() / "profiles"
    keep.mkdir(exist_ok=True)
    run.profile_setup = target.name
    run.profile_seconds = seconds
    run.profile_native = native

    async def under_load() -> None:
        scratch = load.Result()
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            await load.throughput(target, 100, 16, scratch)

    wrapped = {role: svc for role, svc in target.services.items() if svc.cpuprof is not None}
    if wrapped:
        print(
            f"[{clock()}] CPU-time profile of {', '.join(wrapped)} for {seconds:.0f}s under c=16 load ...", flush=True
        )
        cpu0 = {}
        for role, svc in wrapped.items():
            assert svc.cpuprof is not None
            svc.cpuprof.unlink(missing_ok=True)
            cpu0[role] = load.cpu_of([svc.proc])
            os.kill(svc.popen.pid, signal.SIGUSR1)
        await under_load()
        cpu = {}
        for role, svc in wrapped.items():
            os.kill(svc.popen.pid, signal.SIGUSR2)
            cpu[role] = load.cpu_of([svc.proc]) - cpu0[role]
        for role, svc in wrapped.items():
            assert svc.cpuprof is not None
            with anyio.move_on_after(15):
                # Another process writes it from a signal handler: nothing to wait on but the file.
                while not svc.cpuprof.exists():  # noqa: ASYNC110
                    await anyio.sleep(0.1)
            if svc.cpuprof.exists():
                prof = spy.parse(svc.cpuprof.read_text(), role)
                prof.cpu_seconds = cpu[role]
                run.cpu_profiles.append(prof)
                (keep / f"cpuprof-{role}.txt").write_bytes(svc.cpuprof.read_bytes())
            else:
                run.cpu_profiles.append(spy.Profile(role, error="the CPU-time profiler wrote nothing"))
    exe = await anyio.to_thread.run_sync(tools_venv, "py-spy")
    if exe is None:
        print("py-spy could not be installed; no py-spy profile", flush=True)
        return
    procs = {"edge": target.roles["edge"](), "adapter": target.roles["adapter"]()}
    print(f"[{clock()}] py-spy of edge and adapter for {seconds:.0f}s under c=16 load ...", flush=True)
    running = {
        role: spy.start(exe, ps[0].pid, seconds, out_dir / f"{role}.txt", native=native)
        for role, ps in procs.items()
        if ps
    }
    await under_load()
    run.profiles = [
        await anyio.to_thread.run_sync(spy.finish, p, out_dir / f"{role}.txt", role, native)
        for role, p in running.items()
    ]
    for f in out_dir.glob("*.txt"):
        (keep / f"py-spy-{f.stem}{'-native' if native else ''}.txt").write_bytes(f.read_bytes())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--quick", action="store_true", help="under a minute: direct-http, fedmcp and relay-floor only, small extras"
    )
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--latency-calls", type=int, help="sequential calls per setup per round")
    ap.add_argument("--throughput-calls", type=int, help="calls per setup per round at each concurrency")
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--joins", type=int, help="adapter joins for the list_changed latency (0: skip)")
    ap.add_argument("--sessions", type=int, help="idle handshake-era sessions on one edge (0: skip)")
    ap.add_argument("--big-reads", type=int, help="50 MB resource reads (0: skip)")
    ap.add_argument("--floor", type=int, help="calls for the frameworks' floor (scripts/bench/floor.py; 0: skip)")
    ap.add_argument("--profile-seconds", type=float, help="py-spy the edge and adapter this long (0: skip)")
    ap.add_argument(
        "--profile-python-only",
        dest="profile_native",
        action="store_false",
        help="py-spy without --native (then uvloop's idle epoll time shows as Runner.run)",
    )
    ap.add_argument("--only", help="comma-separated setup names to measure")
    ap.add_argument(
        "--profile-setup", default="fedmcp", help="the setup profiled (fedmcp or fedmcp-legacy: same processes)"
    )
    ap.add_argument(
        "--baseline",
        type=Path,
        help="a checkout of another revision with its own .venv (uv sync there): its standard path is measured "
        "as fedmcp-base in the same rounds, for a before/after that machine drift cannot skew",
    )
    ap.add_argument("--out", type=Path, help="markdown to write (default: docs/benchmarks.md; --quick: none)")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    full = {"rounds": 5, "latency_calls": 200, "throughput_calls": 600, "joins": 20, "sessions": 10_000}
    full |= {"big_reads": 1, "profile_seconds": 30, "floor": 3000}
    quick = {"rounds": 3, "latency_calls": 30, "throughput_calls": 100, "joins": 0, "sessions": 0}
    quick |= {"big_reads": 0, "profile_seconds": 0, "floor": 0}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.out is None and not args.quick and not args.no_write:
        args.out = ROOT / "docs" / "benchmarks.md"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("httpx2", "httpx", "mcp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=state_dir()))
    stack = Stack(work, cpuprof=args.profile_seconds > 0, baseline=args.baseline)
    run = report.Run(setups=[], results={}, extras=None, quick=args.quick)
    run.params = {
        "rounds": str(args.rounds),
        "latency calls/round": str(args.latency_calls),
        "throughput calls/round/concurrency": str(args.throughput_calls),
        "warm-up": str(args.warmup),
    }
    started = time.perf_counter()

    async def go() -> None:
        with anyio.fail_after(3600):  # the whole run, clients' lifetimes included
            await measure(args, stack, run)

    try:
        anyio.run(go)
    finally:
        print(f"[{clock()}] stopping ...", flush=True)
        stack.stop()
    print(f"\nlogs in {work}; {time.perf_counter() - started:.0f}s\n", flush=True)
    print(report.console(run))
    if args.out is not None and not args.no_write:
        previous = args.out.read_text() if args.out.exists() else ""
        args.out.write_text(report.markdown(run, previous))
        png = args.out.with_suffix(".png")
        report.plot(run, png)
        print(f"\nwrote {args.out} and {png}")


if __name__ == "__main__":
    main()
