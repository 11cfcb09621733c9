"""Conformance CLIENT mode through the federation: the `--command` the harness spawns.

The harness (``conformance client --command "<this> [options]"``) starts a mock MCP server
per scenario and runs ``<command> <mock url>`` with MCP_CONFORMANCE_SCENARIO (and, in the
0.2 alphas, MCP_CONFORMANCE_CONTEXT / MCP_CONFORMANCE_PROTOCOL_VERSION) set. This shim:

1. starts a nats-server (temp dir, free loopback port);
2. runs ``uv run fedmcp up --config <toml> --nats-url <url>`` with the mock as the only
   server (``[servers.mock] url = <mock url>``, ``prefix = ""`` so names pass through) and
   the edge on a free loopback port;
3. waits, bounded, until the edge answers ``/readyz`` and serves the mock's catalog exactly
   as the adapter published it in the catalogs bucket (no traffic to the mock is added);
4. runs the SDK conformance client with the same environment against the EDGE url;
5. stops the federation and NATS, and exits with the client's exit code
   (124: the client timed out, 125: the federation never became ready, 143: stopped by a signal).

Diagnostics go to stderr (with ``-o DIR`` the harness saves it as stderr.txt next to checks.json);
fedmcp's own log is kept in the work dir (``--work-dir``, else a temp dir kept on failure).

Run by run_client.py; by hand:
  PORT_BASE=15700 .conformance/node22/node_modules/.bin/node -r ./scripts/conformance/bind_localhost.cjs \\
    .conformance/npm/node_modules/conf-a11/dist/index.js client --scenario tools_call \\
    --command ".venv/bin/python scripts/conformance/client_shim.py"
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from contextlib import suppress
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

import anyio
from fedmcp.adapter.connection import raw_request
from fedmcp.cli.inspect import read_state
from fedmcp.shared.buckets import Region
from fedmcp.shared.natsserver import NatsServer, free_port
from fedmcp.shared.subjects import DEFAULT_PREFIX
from mcp import Client
from mcp.shared.exceptions import MCPError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import PE, ROOT, VENV_PY, _alive, _descendants  # helpers of the server-mode runner

REGION = Region("conformance-client")
"""The shim's federation runs as this region; its catalog is read from that region's buckets."""

SERVER = "mock"
LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}
DEFAULT_CLIENT = f"{VENV_PY} {PE / 'conformance_client.py'}"
EDGE_LISTS = {
    "tools": ("tools/list", "tools"),
    "prompts": ("prompts/list", "prompts"),
    "resources": ("resources/list", "resources"),
    "templates": ("resources/templates/list", "resourceTemplates"),
}


def log(msg: str) -> None:
    print(f"[client-shim {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


STOP = threading.Event()
"""Set by SIGTERM/SIGHUP/SIGINT (e.g. the harness's timeout kill). Checked by every wait below;
a handler that raised instead could land inside any asyncio task (nats-py's) and be lost."""


class Stopped(Exception):
    """A stop signal was noticed: tear down, then exit."""


def _on_signal(signum: int, frame: FrameType | None) -> None:
    STOP.set()
    os.write(2, f"[client-shim] {signal.Signals(signum).name}: stopping\n".encode())


def check_stop() -> None:
    if STOP.is_set():
        raise Stopped("signal")


def federation_toml(mock_url: str, data_dir: Path, edge_port: int, era: str | None) -> str:
    lines = [
        f"data_dir = {json.dumps(str(data_dir))}",
        f'region = "{REGION.name}"',
        "[edge]",
        'host = "127.0.0.1"',
        f"port = {edge_port}",
        "anonymous = true",
        f"[servers.{SERVER}]",
        f"url = {json.dumps(mock_url)}",
        'prefix = ""',
    ]
    if era is not None:
        lines.append(f"era = {json.dumps(era)}")
    return "\n".join(lines) + "\n"


# -- readiness -------------------------------------------------------------------------------


def _readyz(port: int) -> tuple[int, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
    try:
        with opener.open(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            return int(resp.status), resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


async def _bus_catalog(nats_url: str) -> dict[str, Any] | None:
    """The mock's catalog as the adapter announced it (catalogs bucket), or None if not there yet."""
    with anyio.fail_after(10):
        catalogs, _ = await read_state(nats_url, DEFAULT_PREFIX, REGION)
    entry = catalogs.get(SERVER)
    if entry is None:
        return None
    c = entry.catalog
    return {
        "counts": {
            "tools": len(c.tools),
            "prompts": len(c.prompts),
            "resources": len(c.resources),
            "templates": len(c.resource_templates),
        },
        "protocol_version": c.protocol_version,
        "server_info": c.server_info,
        "tools": sorted(str(t.get("name")) for t in c.tools),
    }


async def _edge_counts(edge_url: str) -> dict[str, int]:
    """Every page of every list the edge serves (from its memory), unfiltered: raw JSON-RPC
    through an SDK session, since `Client.list_tools()` drops tools the SDK deems invalid."""
    counts: dict[str, int] = {}
    with anyio.fail_after(10):
        async with Client(edge_url) as client:
            for kind, (method, key) in EDGE_LISTS.items():
                n, cursor = 0, None
                try:
                    for _ in range(1000):
                        page = await raw_request(client, method, {"cursor": cursor} if cursor else None, timeout=5)
                        n += len(page.get(key) or [])
                        cursor = page.get("nextCursor")
                        if not cursor:
                            break
                except MCPError as exc:  # a list the edge refuses counts as empty
                    log(f"edge {method} failed: {exc!r}")
                counts[kind] = n
    return counts


def wait_ready(
    edge_port: int, edge_url: str, nats_url: str, fed: subprocess.Popen[bytes], timeout: float
) -> dict[str, Any]:
    """Poll (bounded) until /readyz is 200, the mock's catalog is in the bucket and the edge serves all of it."""
    deadline = time.monotonic() + timeout
    catalog: dict[str, Any] | None = None
    edge_ready = False
    last = ""
    while True:
        check_stop()
        stage = "readyz" if not edge_ready else "catalog" if catalog is None else "edge lists"
        if fed.poll() is not None:
            raise RuntimeError(f"`fedmcp up` exited with {fed.returncode} while waiting ({stage}: {last})")
        if time.monotonic() > deadline:
            raise TimeoutError(f"federation not ready within {timeout}s (stage {stage}: {last})")
        try:
            if not edge_ready:
                status, body = _readyz(edge_port)
                last = f"/readyz {status} {body[:200]}"
                edge_ready = status == 200
            elif catalog is None:
                catalog = anyio.run(_bus_catalog, nats_url)
                last = f"no catalog for server {SERVER!r} in the catalogs bucket yet"
            else:
                counts = anyio.run(_edge_counts, edge_url)
                last = f"edge lists {counts}, bucket {catalog['counts']}"
                if counts == catalog["counts"]:
                    return catalog
            if edge_ready and stage == "readyz":
                continue  # next stage at once
        except Exception as exc:  # edge not listening yet, NATS or edge slow to answer
            last = repr(exc)
        time.sleep(0.1)  # poll interval only; every wait above is bounded by `deadline`


# -- processes --------------------------------------------------------------------------------


def stop_group(p: subprocess.Popen[bytes], name: str, timeout: float) -> None:
    """SIGTERM the leader only (`uv run` forwards it once to fedmcp, which drains), then SIGKILL the group."""
    tree = _descendants(p.pid)
    if p.poll() is None:
        with suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            log(f"{name} still up {timeout}s after SIGTERM: SIGKILL to its process group")
            with suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout)
    for pid in tree:
        if _alive(pid):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def kill_group(p: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    if p.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout)


def tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"(no {path})"


# -- main -------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url", help="the mock server URL (the harness appends it)")
    ap.add_argument("--work-dir", type=Path, help="keep nats, fedmcp.toml and fedmcp.log here (default: temp dir)")
    ap.add_argument("--era", help='the adapter\'s backing-connection era ("auto" by default, "legacy", "2026-07-28")')
    ap.add_argument("--client", default=DEFAULT_CLIENT, help="conformance client command (the edge url is appended)")
    ap.add_argument("--fedmcp-root", type=Path, default=ROOT, help="checkout whose `uv run fedmcp` runs")
    ap.add_argument("--ready-timeout", type=float, default=60.0, help="seconds for the federation to be ready")
    ap.add_argument("--client-timeout", type=float, default=150.0, help="seconds for the conformance client")
    ns = ap.parse_args(argv)

    host = urlsplit(ns.url).hostname
    if host not in LOOPBACK_HOSTS:
        log(f"refusing non-loopback target {ns.url!r}")
        return 2
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, _on_signal)

    own_dir = ns.work_dir is None
    work: Path = Path(tempfile.mkdtemp(prefix="fedmcp-client-shim-")) if own_dir else ns.work_dir
    work.mkdir(parents=True, exist_ok=True)
    scenario = os.environ.get("MCP_CONFORMANCE_SCENARIO")
    log(f"scenario={scenario} protocol={os.environ.get('MCP_CONFORMANCE_PROTOCOL_VERSION')} mock={ns.url} work={work}")

    t0 = time.monotonic()
    rc = 125
    nats: NatsServer | None = None
    fed: subprocess.Popen[bytes] | None = None
    client: subprocess.Popen[bytes] | None = None
    try:
        nats = NatsServer(work / "nats").start()
        edge_port = free_port()
        edge_url = f"http://127.0.0.1:{edge_port}/mcp"
        toml = work / "fedmcp.toml"
        toml.write_text(federation_toml(ns.url, work / "data", edge_port, ns.era))
        cmd = ["uv", "run", "fedmcp", "up", "--config", str(toml), "--nats-url", nats.url]
        with (work / "fedmcp.log").open("ab") as out:
            fed = subprocess.Popen(
                cmd, cwd=ns.fedmcp_root, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            catalog = wait_ready(edge_port, edge_url, nats.url, fed, ns.ready_timeout)
        except (RuntimeError, TimeoutError) as exc:
            log(f"ERROR: {exc}\n--- fedmcp.log (tail) ---\n{tail(work / 'fedmcp.log')}")
            return 125
        ready_s = time.monotonic() - t0
        log(
            f"federation ready in {ready_s:.1f}s: edge {edge_url}; adapter negotiated "
            f"{catalog['protocol_version']} with {catalog['server_info']}; lists {catalog['counts']}; "
            f"tools {catalog['tools']}"
        )

        c0 = time.monotonic()
        check_stop()
        client = subprocess.Popen([*shlex.split(ns.client), edge_url], start_new_session=True)  # inherits env/stdio
        client_deadline = c0 + ns.client_timeout
        while (code := client.poll()) is None:
            check_stop()
            if time.monotonic() > client_deadline:
                log(f"conformance client still running after {ns.client_timeout}s: killed")
                kill_group(client)
                code = 124
                break
            with suppress(subprocess.TimeoutExpired):
                client.wait(0.2)  # bounded: the loop notices a stop signal within 0.2 s
        rc = code if code >= 0 else 128 - code  # killed by signal N: 128+N, as a shell reports it
        log(f"conformance client exited {rc} after {time.monotonic() - c0:.1f}s")
        return rc
    except Stopped:
        log("stopped by a signal")
        rc = 143
        return rc
    finally:
        if client is not None:
            kill_group(client)
        if fed is not None:
            stop_group(fed, "fedmcp up", timeout=15.0)
        if nats is not None:
            nats.stop()
        log(f"torn down; total {time.monotonic() - t0:.1f}s")
        if own_dir:
            if rc == 0:
                shutil.rmtree(work, ignore_errors=True)
            else:
                log(f"kept {work} (fedmcp.log)")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
