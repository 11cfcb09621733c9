"""Run a Python module under a CPU-time sampling profiler that signals switch on and off.

    python scripts/bench/cpuprof.py OUT.txt -m fedmcp.cli.main edge ...

SIGUSR1 starts sampling, SIGUSR2 stops it and writes OUT.txt in py-spy's raw (collapsed) format (and,
when the process runs with PYTHONTRACEMALLOC=N, OUT.txt.mem.txt: the largest live allocations). The
timer is ITIMER_PROF, which ticks only while the process uses CPU (user or kernel), so samples are
weighted by CPU time: a process waiting in epoll is never sampled, and one that is runnable but not
running (preempted on a busy machine) is not either. That is what py-spy cannot tell apart here (see
docs/benchmarks.md). The handler records the main thread's Python stack when the tick is delivered, so
time in C code is counted to the Python function that called it. Until SIGUSR1 nothing is installed
but the two signal handlers: no cost.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
from collections import Counter
from types import FrameType

INTERVAL = float(os.environ.get("BENCH_CPUPROF_INTERVAL", "0.005"))
"""Seconds of CPU time between samples (at 2 ms ticks coalesce and about half are lost; at 5 ms ~90% land)."""

_counts: Counter[str] = Counter()
_out = ""


def _on_tick(_signum: int, frame: FrameType | None) -> None:
    parts: list[str] = []
    while frame is not None:
        code = frame.f_code
        parts.append(f"{code.co_qualname} ({code.co_filename})")
        frame = frame.f_back
    parts.reverse()
    _counts[";".join(parts)] += 1


def _start(_signum: int, _frame: FrameType | None) -> None:
    _counts.clear()
    signal.setitimer(signal.ITIMER_PROF, INTERVAL, INTERVAL)


def _stop(_signum: int, _frame: FrameType | None) -> None:
    signal.setitimer(signal.ITIMER_PROF, 0, 0)
    tmp = _out + ".tmp"
    with open(tmp, "w") as fh:
        for stack, n in _counts.items():
            fh.write(f"{stack} {n}\n")
    os.replace(tmp, _out)
    _dump_memory()


def _dump_memory() -> None:
    """With PYTHONTRACEMALLOC=N in the environment: the largest live allocations by traceback, to OUT.mem.txt."""
    import tracemalloc

    if not tracemalloc.is_tracing():
        return
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    stats = snapshot.statistics("traceback")
    total = sum(stat.size for stat in stats)
    with open(_out + ".mem.txt", "w") as fh:
        fh.write(f"{total / 1e6:.1f} MB traced in {sum(stat.count for stat in stats)} blocks\n\nby file:\n")
        for stat in snapshot.statistics("filename")[:25]:
            fh.write(f"{stat.size / 1e6:8.2f} MB {stat.count:8d} blocks  {stat.traceback[0].filename}\n")
        fh.write("\nby line:\n")
        for stat in snapshot.statistics("lineno")[:40]:
            frame = stat.traceback[0]
            fh.write(f"{stat.size / 1e6:8.2f} MB {stat.count:8d} blocks  {frame.filename}:{frame.lineno}\n")
        fh.write("\nby traceback:\n")
        for stat in stats[:40]:
            fh.write(f"{stat.size / 1e6:8.2f} MB {stat.count:8d} blocks\n")
            for line in stat.traceback.format()[-12:]:
                fh.write(f"    {line}\n")


def main() -> None:
    global _out
    if len(sys.argv) < 4 or sys.argv[2] != "-m":
        sys.exit(__doc__)
    _out, module, rest = sys.argv[1], sys.argv[3], sys.argv[4:]
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]  # no shadowing by bench modules
    signal.signal(signal.SIGPROF, _on_tick)
    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _stop)
    sys.argv = [module, *rest]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
