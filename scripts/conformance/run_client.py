"""Differential MCP conformance, CLIENT mode: the SDK's conformance client directly vs through fedmcp.

For every non-auth client scenario of each harness leg, runs the harness once with
``--command "<venv python> conformance_client.py"`` (direct: the client talks to the
harness's mock server) and once with ``--command "<venv python> client_shim.py"``
(federated: the shim starts NATS + ``fedmcp up`` with the mock as the only backing server
and runs the same client against the edge). Scenarios run one at a time (``--scenario``),
so each has its own mock; compares per-check statuses from checks.json, the harness exit
code and the client's exit code; exits 1 when the federation differs from direct.

Legs: 0.1.16 (its default wire), 0.2.0-alpha.11 pinned to 2025-11-25 and to 2026-07-28
(every non-auth scenario the harness lists as applicable at that version).

Install first: scripts/conformance/setup.sh. Run: uv run python scripts/conformance/run_client.py
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import NODE, PE, ROOT, VENV_PY, W, git_state, write_json  # helpers of the server-mode runner

HERE = Path(__file__).resolve().parent
PRELOAD = HERE / "bind_localhost.cjs"
SHIM = HERE / "client_shim.py"
CLIENT = PE / "conformance_client.py"
TARGETS = ("direct", "federated")


@dataclass(frozen=True)
class Leg:
    name: str
    harness: str  # package alias under .conformance/npm/node_modules
    spec_version: str | None  # --spec-version (alpha: also pins the wire)

    @property
    def js(self) -> Path:
        return W / "npm" / "node_modules" / self.harness / "dist" / "index.js"


LEGS = {
    leg.name: leg
    for leg in (
        Leg("0.1.16", "conf-0116", None),
        Leg("a11-2025-11-25", "conf-a11", "2025-11-25"),
        Leg("a11-2026-07-28", "conf-a11", "2026-07-28"),
    )
}


@dataclass
class ScenarioRun:
    target: str
    rc: int
    seconds: float
    client_exit: int | None  # None: the harness reported no non-zero exit
    timed_out: bool
    checks: dict[str, list[str]]  # "<check id> <check name>" -> statuses (INFO left out)
    messages: dict[str, list[str]] = field(default_factory=dict)
    mock_saw: list[str] = field(default_factory=list)  # the methods the mock received, in order
    out: str = ""

    def counts(self) -> tuple[int, int, int]:
        flat = [s for v in self.checks.values() for s in v]
        return flat.count("SUCCESS"), flat.count("FAILURE"), flat.count("WARNING")

    def brief(self) -> str:
        ok, bad, warn = self.counts()
        extra = f" client-exit={self.client_exit}" if self.client_exit else ""
        extra += " TIMEOUT" if self.timed_out else ""
        return f"{ok} passed {bad} failed{f' {warn} warn' if warn else ''}, rc={self.rc}{extra} ({self.seconds:.1f}s)"


_LIST_LINE = re.compile(r"^\s+- (\S+) \[")


def scenarios(leg: Leg) -> list[str]:
    """Non-auth client scenarios the harness lists (as applicable at the leg's spec version)."""
    args = [str(NODE), str(leg.js), "list", "--client"]
    if leg.spec_version:
        args += ["--spec-version", leg.spec_version]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True).stdout
    names = [m.group(1) for line in out.splitlines() if (m := _LIST_LINE.match(line))]
    return [n for n in names if not n.startswith("auth/")]


def free_block(n: int = 8) -> int:
    """A loopback port p with p..p+n-1 free now (PORT_BASE for the preload; the mock takes p)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base: int = s.getsockname()[1]
        if base + n > 65535:
            continue
        socks: list[socket.socket] = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no block of free loopback ports")


def _stop_group(p: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the harness's group (the shim tears the federation down on it), SIGKILL after `grace`."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        if p.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(wait)


def run_scenario(leg: Leg, scenario: str, target: str, out: Path, timeout_ms: int, era: str | None) -> ScenarioRun:
    out.mkdir(parents=True, exist_ok=True)
    if target == "direct":
        command = f"{VENV_PY} {CLIENT}"
    else:
        command = f"{VENV_PY} {SHIM} --work-dir {out / 'shim'}"
        if era:
            command += f" --era {era}"
    args = [str(NODE), "-r", str(PRELOAD), str(leg.js), "client", "--command", command, "--scenario", scenario]
    if leg.spec_version:
        args += ["--spec-version", leg.spec_version]
    args += ["--timeout", str(timeout_ms), "-o", str(out / "checks")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_CONFORMANCE_")}
    env["PORT_BASE"] = str(free_block())
    start = time.monotonic()
    with (out / "harness.log").open("wb") as log:
        p = subprocess.Popen(args, cwd=out, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = p.wait(timeout_ms / 1000 + 60)
        except subprocess.TimeoutExpired:
            _stop_group(p, 30.0)
            rc = -1
    seconds = time.monotonic() - start
    text = re.sub(r"\x1b\[[0-9;]*m", "", (out / "harness.log").read_text(errors="replace"))
    m = re.search(r"Client exited with code (-?\d+)", text)
    run = ScenarioRun(
        target,
        rc,
        seconds,
        int(m.group(1)) if m else None,
        "Client timed out" in text,
        {},
        out=str(out),
    )
    for f in sorted((out / "checks").glob("*/checks.json")):
        for c in json.loads(f.read_text()):
            cid, status = str(c.get("id")), str(c.get("status"))
            if status == "INFO":
                if cid == "incoming-request":  # the 0.1.x mocks log every request they receive
                    d = c.get("details") or {}
                    run.mock_saw.append(str(d.get("mcpMethod") or d.get("method") or c.get("description")))
                continue
            key = f"{cid} {c.get('name')}"  # one id often covers several sub-checks, told apart by name
            run.checks.setdefault(key, []).append(status)
            if status in ("FAILURE", "WARNING"):
                run.messages.setdefault(key, []).append(str(c.get("errorMessage", ""))[:300])
    for statuses in run.checks.values():
        statuses.sort()
    return run


def compare(scenario: str, runs: dict[str, ScenarioRun]) -> dict[str, Any]:
    d, f = runs["direct"], runs["federated"]
    diffs: list[dict[str, Any]] = []
    for cid in sorted(set(d.checks) | set(f.checks)):
        a, b = d.checks.get(cid, ["MISSING"]), f.checks.get(cid, ["MISSING"])
        if a != b:
            diffs.append(
                {
                    "check": cid,
                    "direct": a,
                    "federated": b,
                    "direct_messages": d.messages.get(cid, []),
                    "federated_messages": f.messages.get(cid, []),
                }
            )
    for what in ("rc", "client_exit", "timed_out"):
        if getattr(d, what) != getattr(f, what):
            diffs.append({"check": f"<harness {what}>", "direct": getattr(d, what), "federated": getattr(f, what)})
    if not diffs:
        verdict = "same"
    elif d.rc == 0 and f.rc != 0:
        verdict = "WORSE"  # passes directly, fails through the federation
    elif d.rc != 0 and f.rc == 0:
        verdict = "BETTER"  # fails directly, passes through the federation
    else:
        verdict = "DIFF"
    return {
        "scenario": scenario,
        "verdict": verdict,
        "direct": d.brief(),
        "federated": f.brief(),
        "same": not diffs,
        "differences": diffs,
        "mock_saw": {"direct": d.mock_saw, "federated": f.mock_saw},
        "out": {"direct": d.out, "federated": f.out},
    }


def run_leg(
    leg: Leg, names: list[str], work: Path, timeout_ms: int, era: str | None, jobs: int
) -> list[dict[str, Any]]:
    jobs_list = [(s, t) for s in names for t in TARGETS]
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {
            (s, t): pool.submit(run_scenario, leg, s, t, work / leg.name / s / t, timeout_ms, era) for s, t in jobs_list
        }
        return [compare(s, {t: futures[(s, t)].result() for t in TARGETS}) for s in names]


def print_leg(name: str, seconds: float, rows: list[dict[str, Any]]) -> None:
    print(f"\n=== {name} ({seconds:.1f} s)")
    width = max((len(r["scenario"]) for r in rows), default=10)
    for r in rows:
        print(f"  {r['verdict']:<6} {r['scenario']:<{width}}  direct: {r['direct']:<42} federated: {r['federated']}")
        for d in r["differences"]:
            print(f"       {d['check']}: direct={d['direct']} federated={d['federated']}")
            for m in d.get("direct_messages", []):
                print(f"         [direct] {m}")
            for m in d.get("federated_messages", []):
                print(f"         [federated] {m}")
        if not r["same"]:
            for t in TARGETS:
                if r["mock_saw"][t]:
                    print(f"       mock saw ({t}): {' '.join(r['mock_saw'][t])}")


def expected_differences() -> set[tuple[str, str]]:
    """(leg, scenario) pairs allowed to differ, from expected-differences.txt (client legs are `client:<leg>`)."""
    pairs: set[tuple[str, str]] = set()
    for line in Path(__file__).with_name("expected-differences.txt").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 2 and not line.startswith("#"):
            pairs.add((fields[0], fields[1]))
    return pairs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--leg", action="append", choices=sorted(LEGS), help="repeatable; default: all legs")
    ap.add_argument("--scenario", action="append", help="repeatable; default: every non-auth scenario of the leg")
    ap.add_argument("--era", help="the shim's adapter era (fedmcp.toml `era`); default: fedmcp's default (auto)")
    ap.add_argument("--timeout", type=int, default=180_000, help="harness --timeout (ms) per scenario, both targets")
    ap.add_argument("--jobs", type=int, default=1, help="harness runs at once (default 1: timing checks stay honest)")
    ap.add_argument("--json", type=Path, default=W / "results" / "client-latest.json", help="summary file")
    ap.add_argument("--work-dir", type=Path, help="default: a new temp dir (kept: logs, checks.json)")
    ns = ap.parse_args()
    if not NODE.exists() or not CLIENT.exists() or shutil.which("uv") is None:
        print("needs uv on PATH and scripts/conformance/setup.sh run first", file=sys.stderr)
        return 2
    work = ns.work_dir or Path(tempfile.mkdtemp(prefix="fedmcp-conformance-client-"))
    work.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"fedmcp": git_state(ROOT), "era": ns.era, "work_dir": str(work), "legs": {}}
    differs = False
    t_all = time.monotonic()
    for leg in [LEGS[n] for n in ns.leg or LEGS]:
        names = [s for s in scenarios(leg) if not ns.scenario or s in ns.scenario]
        t0 = time.monotonic()
        rows = run_leg(leg, names, work, ns.timeout, ns.era, ns.jobs)
        seconds = time.monotonic() - t0
        # Fail on what the federation makes worse, unless it is a documented difference.
        allowed = expected_differences()
        differs |= any(r["verdict"] == "WORSE" and (f"client:{leg.name}", r["scenario"]) not in allowed for r in rows)
        summary["legs"][leg.name] = {"seconds": round(seconds, 1), "scenarios": rows}
        print_leg(leg.name, seconds, rows)
        write_json(ns.json, summary)
    summary["seconds"] = round(time.monotonic() - t_all, 1)
    write_json(ns.json, summary)
    print(f"\ntotal {summary['seconds']} s   summary: {ns.json}   logs and checks.json: {work}")
    return 1 if differs else 0


if __name__ == "__main__":
    sys.exit(main())
