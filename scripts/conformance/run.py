"""Differential MCP conformance: the everything-server directly vs through the fedmcp federation.

For each harness leg: run it against the SDK's everything-server over HTTP (direct), then
against a fedmcp edge whose only server is that everything-server (prefix ""), once with a
stdio backing connection and once with an HTTP one. Compares per-scenario, per-check
statuses from the harness's checks.json; exits 1 when the federation differs from direct.

Install first: scripts/conformance/setup.sh. Run: uv run python scripts/conformance/run.py
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from fedmcp.shared.natsserver import NatsServer, free_port
from mcp import Client

ROOT = Path(__file__).resolve().parents[2]
W = ROOT / ".conformance"
NODE = W / "node22" / "node_modules" / ".bin" / "node"
PE = W / "py-everything"
VENV_PY = ROOT / ".venv" / "bin" / "python"
EVERYTHING_PY = PE / "venv" / "bin" / "python"
"""The everything-server's own environment (setup.sh): uvicorn with its default parser, as people run it."""
STDIO_ARGS = ["-c", "from mcp_everything_server.server import mcp; mcp.run('stdio')"]
BACKINGS = ("stdio", "http")


@dataclass(frozen=True)
class Leg:
    name: str
    harness: str  # package alias under .conformance/npm/node_modules
    args: tuple[str, ...]
    baseline: str | None  # expected-failures file (direct runs only)


LEGS = {
    leg.name: leg
    for leg in (
        Leg("0.1.16-active", "conf-0116", (), None),
        Leg("a11-2025-11-25", "conf-a11", ("--suite", "all", "--spec-version", "2025-11-25"), "2025-11-25"),
        Leg("a11-2026-07-28", "conf-a11", ("--suite", "all", "--spec-version", "2026-07-28"), "2026-07-28"),
    )
}


@dataclass
class RunResult:
    target: str
    rc: int
    seconds: float
    checks: dict[tuple[str, str], list[str]]  # (scenario, check id) -> statuses
    messages: dict[tuple[str, str], list[str]] = field(default_factory=dict)

    def totals(self) -> dict[str, int]:
        c = Counter(s for statuses in self.checks.values() for s in statuses)
        scen: dict[str, bool] = {}
        for (sc, _), statuses in self.checks.items():
            scen[sc] = scen.get(sc, True) and "FAILURE" not in statuses
        return {
            "passed": c["SUCCESS"],
            "failed": c["FAILURE"],
            "scenarios": len(scen),
            "scenarios_passed": sum(scen.values()),
        }


class Procs:
    """Children started in their own process groups; stopped (and their descendants) on exit."""

    def __init__(self) -> None:
        self.live: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], log: Path, **kw: Any) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            p = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kw)
        self.live.append(p)
        return p

    def stop(self, p: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        tree = _descendants(p.pid)  # e.g. the stdio backing server (its own session)
        if p.poll() is None:
            _signal_group(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                print(
                    f"note: {str(p.args)[:100]} still up {timeout}s after SIGTERM; SIGKILL",
                    file=sys.stderr,
                )
                _signal_group(p.pid, signal.SIGKILL)
                p.wait(timeout)
        for pid in tree:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if p in self.live:
            self.live.remove(p)

    def stop_all(self) -> None:
        for p in reversed(list(self.live)):
            self.stop(p)


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)  # the group our own child leads


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


async def _tool_names(url: str) -> set[str]:
    names: set[str] = set()
    with anyio.fail_after(5):
        async with Client(url) as client:
            cursor: str | None = None
            while True:
                page = await client.list_tools(cursor=cursor)
                names.update(t.name for t in page.tools)
                cursor = page.next_cursor
                if not cursor:
                    return names


def wait_tools(url: str, proc: subprocess.Popen[bytes], want: set[str] | None, timeout: float = 60.0) -> set[str]:
    """Poll list_tools until it shows tools (all of `want`, if given); bounded by `timeout`."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before {url} was ready")
        try:
            names = anyio.run(_tool_names, url)
            if names and (want is None or want <= names):
                return names
            last = sorted(names)
        except Exception as exc:  # not listening yet, or catalog not there yet
            last = exc
        time.sleep(0.25)  # poll interval only
    raise TimeoutError(f"{url} not ready within {timeout}s (last: {last!r})")


_SCEN_DIR = re.compile(r"^server-(.+)-\d{4}-\d{2}-\d{2}T[\d-]+Z$")


def run_harness(leg: Leg, target: str, url: str, out: Path, timeout: float) -> RunResult:
    js = W / "npm" / "node_modules" / leg.harness / "dist" / "index.js"
    args = [str(NODE), str(js), "server", "--url", url, *leg.args, "-o", str(out / "checks")]
    if leg.baseline and target == "direct":
        args += ["--expected-failures", str(PE / "baselines" / f"expected-failures.{leg.baseline}.yml")]
    start = time.monotonic()
    with (out / "harness.log").open("wb") as log:
        rc = subprocess.run(args, cwd=out, stdout=log, stderr=subprocess.STDOUT, timeout=timeout).returncode
    seconds = time.monotonic() - start
    checks: dict[tuple[str, str], list[str]] = {}
    messages: dict[tuple[str, str], list[str]] = {}
    for f in sorted((out / "checks").glob("*/checks.json")):
        m = _SCEN_DIR.match(f.parent.name)
        scenario = m.group(1) if m else f.parent.name
        for c in json.loads(f.read_text()):
            key = (scenario, str(c.get("id")))
            checks.setdefault(key, []).append(str(c.get("status")))
            if c.get("status") in ("FAILURE", "WARNING"):
                messages.setdefault(key, []).append(str(c.get("errorMessage", ""))[:200])
    for statuses in checks.values():
        statuses.sort()
    return RunResult(target, rc, seconds, checks, messages)


def federation_toml(
    backing: str,
    data_dir: Path,
    edge_port: int,
    backing_url: str | None,
    era: str | None,
    sse_poll_after: float | None = None,
) -> str:
    lines = [
        f"data_dir = {json.dumps(str(data_dir))}",
        'region = "conformance"',
        "[edge]",
        'host = "127.0.0.1"',
        f"port = {edge_port}",
        "anonymous = true",
    ]
    if sse_poll_after is not None:  # only written when asked: older checkouts reject unknown fields
        lines.append(f"sse_poll_after = {sse_poll_after}")
    lines += ["[servers.everything]", 'prefix = ""']
    if era is not None:  # only written when asked: older checkouts reject unknown fields
        lines.append(f"era = {json.dumps(era)}")
    if backing == "stdio":
        lines += [
            # The everything-server is dual-era and its legacy-only tools (mid-call sampling,
            # elicitation) need a handshake-era session: give each client era its own process.
            "era_companion = true",
            f"command = {json.dumps(str(EVERYTHING_PY))}",
            f"args = {json.dumps(STDIO_ARGS)}",
            f"cwd = {json.dumps(str(PE))}",
        ]
    else:
        lines.append(f"url = {json.dumps(backing_url)}")
    return "\n".join(lines) + "\n"


def start_everything(procs: Procs, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    p = procs.start([str(EVERYTHING_PY), "-m", "mcp_everything_server", "--port", str(port)], log, cwd=PE)
    return p, f"http://127.0.0.1:{port}/mcp"


def run_direct(leg: Leg, procs: Procs, out: Path, timeout: float) -> tuple[RunResult, set[str]]:
    server, url = start_everything(procs, out / "everything.log")
    try:
        tools = wait_tools(url, server, None)
        return run_harness(leg, "direct", url, out, timeout), tools
    finally:
        procs.stop(server)


@dataclass(frozen=True)
class FedOptions:
    """How the federation under test is configured (fedmcp.toml)."""

    era: str | None = None
    sse_poll_after: float | None = None


def run_federated(
    leg: Leg,
    backing: str,
    procs: Procs,
    out: Path,
    tools: set[str],
    timeout: float,
    fedmcp_root: Path,
    opts: FedOptions,
) -> RunResult:
    """fedmcp up (CLI subprocess) on a fresh nats-server, one server `everything` with prefix ""."""
    started: list[subprocess.Popen[bytes]] = []
    nats = NatsServer(out / "nats").start()
    try:
        backing_url = None
        if backing == "http":
            server, backing_url = start_everything(procs, out / "everything.log")
            started.append(server)
            wait_tools(backing_url, server, None)
        edge_port = free_port()
        toml = out / "fedmcp.toml"
        toml.write_text(federation_toml(backing, out / "data", edge_port, backing_url, opts.era, opts.sse_poll_after))
        cmd = ["uv", "run", "fedmcp", "up", "--config", str(toml), "--nats-url", nats.url]
        fed = procs.start(cmd, out / "fedmcp.log", cwd=fedmcp_root)
        started.append(fed)
        edge = f"http://127.0.0.1:{edge_port}/mcp"
        wait_tools(edge, fed, tools)  # every tool the backing server has is routed
        return run_harness(leg, backing, edge, out, timeout)
    finally:
        for p in reversed(started):
            procs.stop(p)
        nats.stop()


def run_leg(
    leg: Leg, backings: list[str], procs: Procs, work: Path, timeout: float, fedmcp_root: Path, opts: FedOptions
) -> dict[str, RunResult]:
    results: dict[str, RunResult] = {}
    for target in ("direct", *backings):
        out = work / leg.name / target
        out.mkdir(parents=True)
        if target == "direct":
            results[target], tools = run_direct(leg, procs, out, timeout)
        else:
            results[target] = run_federated(leg, target, procs, out, tools, timeout, fedmcp_root, opts)
    return results


def diff(results: dict[str, RunResult]) -> list[dict[str, Any]]:
    """Per scenario, the checks whose statuses (INFO entries aside) differ from the direct run."""
    keys = sorted(set().union(*(r.checks for r in results.values())))
    rows: dict[str, dict[str, Any]] = {}
    for key in keys:
        row = {t: [s for s in r.checks.get(key, ["MISSING"]) if s != "INFO"] for t, r in results.items()}
        if all(v == row["direct"] for v in row.values()):
            continue
        by_msg: dict[str, list[str]] = {}
        for t, r in results.items():
            for m in dict.fromkeys(r.messages.get(key, [])):
                by_msg.setdefault(m, []).append(t)
        scen = rows.setdefault(key[0], {"scenario": key[0], "totals": {}, "checks": []})
        scen["checks"].append({"check": key[1], "statuses": row, "messages": by_msg})
    for name, scen in rows.items():
        for t, r in results.items():
            statuses = [s for (sc, _), v in r.checks.items() if sc == name for s in v]
            scen["totals"][t] = f"{statuses.count('SUCCESS')}/{statuses.count('FAILURE')}"
    return list(rows.values())


def expected_differences() -> set[tuple[str, str]]:
    """(leg, scenario:check) pairs allowed to differ, from expected-differences.txt."""
    path = Path(__file__).with_name("expected-differences.txt")
    pairs: set[tuple[str, str]] = set()
    for line in path.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 2 and not line.startswith("#"):
            pairs.add((fields[0], fields[1]))
    return pairs


def git_state(root: Path) -> str:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=root, capture_output=True, text=True, timeout=30).stdout.strip()

    dirty = " (dirty services/ or shared/)" if git("status", "--porcelain", "--", "services", "shared") else ""
    return f"{root.resolve()} @ {git('rev-parse', '--short', 'HEAD') or '?'}{dirty}"


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--leg", action="append", choices=sorted(LEGS), help="repeatable; default: all legs")
    ap.add_argument("--backing", action="append", choices=BACKINGS, help="repeatable; default: stdio and http")
    ap.add_argument("--json", type=Path, default=W / "results" / "latest.json", help="summary file")
    ap.add_argument("--fedmcp-root", type=Path, default=ROOT, help="checkout whose `uv run fedmcp` is tested")
    ap.add_argument("--era", help='backing-connection era written to fedmcp.toml ("auto", "legacy", "2026-07-28")')
    ap.add_argument(
        "--sse-poll-after",
        type=float,
        default=0.1,
        help="the edge's SEP-1699 polling (seconds; 0 disables): long calls' POST streams are closed and resumed",
    )
    ap.add_argument("--harness-timeout", type=float, default=900.0, help="seconds per harness run")
    ns = ap.parse_args()
    if not NODE.exists() or not PE.exists() or shutil.which("uv") is None:
        print("needs uv on PATH and scripts/conformance/setup.sh run first", file=sys.stderr)
        return 2
    legs = [LEGS[n] for n in ns.leg or LEGS]
    backings: list[str] = ns.backing or list(BACKINGS)
    work = Path(tempfile.mkdtemp(prefix="fedmcp-conformance-"))
    procs = Procs()
    summary: dict[str, Any] = {"fedmcp": git_state(ns.fedmcp_root), "era": ns.era, "work_dir": str(work), "legs": {}}
    differs = direct_broken = False
    allowed = expected_differences()
    try:
        for leg in legs:
            t0 = time.monotonic()
            opts = FedOptions(ns.era, ns.sse_poll_after or None)
            results = run_leg(leg, backings, procs, work, ns.harness_timeout, ns.fedmcp_root.resolve(), opts)
            rows = diff(results)
            unexpected = [
                f"{scen['scenario']}:{check['check']}"
                for scen in rows
                for check in scen["checks"]
                if (leg.name, f"{scen['scenario']}:{check['check']}") not in allowed
            ]
            differs |= bool(unexpected)
            direct_broken |= results["direct"].rc != 0
            summary["legs"][leg.name] = {
                "seconds": round(time.monotonic() - t0, 1),
                "runs": {
                    t: {**r.totals(), "harness_rc": r.rc, "harness_seconds": round(r.seconds, 1)}
                    for t, r in results.items()
                },
                "differences": rows,
            }
            print_leg(leg.name, summary["legs"][leg.name])
            write_json(ns.json, summary)
    finally:
        procs.stop_all()
    print(f"\nsummary: {ns.json}   logs and checks.json: {work}")
    if direct_broken:
        print("ERROR: a direct run failed against its expected-failures baseline", file=sys.stderr)
        return 2
    return 1 if differs else 0


def print_leg(name: str, leg: dict[str, Any]) -> None:
    print(f"\n=== {name} ({leg['seconds']} s)")
    for target, t in leg["runs"].items():
        print(
            f"  {target:<7} {t['passed']:>4} passed, {t['failed']:>3} failed   scenarios {t['scenarios_passed']}/{t['scenarios']}"
            f"   harness rc={t['harness_rc']} {t['harness_seconds']} s"
        )
    for scen in leg["differences"]:
        totals = "  ".join(f"{t} {v}" for t, v in scen["totals"].items())
        print(f"  DIFF {scen['scenario']}  (passed/failed: {totals})")
        for check in scen["checks"]:
            sts = " ".join(f"{t}={','.join(s) or '-'}" for t, s in check["statuses"].items())
            print(f"       {check['check']}: {sts}")
            for msg, targets in check["messages"].items():
                print(f"         [{'/'.join(targets)}] {msg}")


if __name__ == "__main__":
    sys.exit(main())
