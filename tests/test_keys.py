"""`fedmcp keys`: API keys stored only as hashes, and the edge's identity key pair."""

from __future__ import annotations

import json
import re
import stat
import subprocess
import sys
from pathlib import Path

import jwt
import pytest
from fedmcp.edge.auth import Authenticator, Denied, hash_api_key
from fedmcp.shared.config import EdgeAuth
from fedmcp.shared.identity import Signer, Verifier, load_private_key, load_public_keys
from fedmcp.shared.policy import Principal

KEY = re.compile(r"fmk_[A-Za-z0-9_-]{43}")


def fedmcp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedmcp.cli.main", "keys", *args], capture_output=True, text=True, timeout=60
    )


def test_api_key_is_printed_once_and_only_its_hash_is_stored(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "api-keys.json"
    done = fedmcp(
        "api", "--principal", "svc:ci", "--tenant", "acme", "--scope", "tools:call", "--scope", "tools:list",
        "--group", "ops", "--file", str(path),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (key,) = done.stdout.split()
    assert KEY.fullmatch(key), key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert key not in text and key[4:] not in text
    doc = json.loads(text)
    assert doc == {
        "keys": [
            {
                "sha256": hash_api_key(key),
                "principal": "svc:ci",
                "tenant": "acme",
                "scopes": ["tools:call", "tools:list"],
                "groups": ["ops"],
            }
        ]
    }
    assert key not in done.stderr

    # A second key is appended; the first one's entry stays.
    again = fedmcp("api", "--principal", "svc:bot", "--file", str(path))
    assert again.returncode == 0, again.stderr
    (second,) = again.stdout.split()
    assert KEY.fullmatch(second) and second != key
    doc = json.loads(path.read_text())
    assert [e["sha256"] for e in doc["keys"]] == [hash_api_key(key), hash_api_key(second)]
    assert doc["keys"][1] == {"sha256": hash_api_key(second), "principal": "svc:bot", "tenant": "", "scopes": [],
                              "groups": []}  # fmt: skip
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    # The edge accepts exactly these keys, as these principals.
    auth = Authenticator(EdgeAuth(resource="http://localhost:8765/mcp", api_keys_file=str(path)))
    assert auth.authenticate(f"Bearer {key}") == Principal(
        id="svc:ci", tenant="acme", scopes=("tools:call", "tools:list"), groups=("ops",)
    )
    assert auth.authenticate(f"Bearer {second}").id == "svc:bot"
    with pytest.raises(Denied):
        auth.authenticate(f"Bearer {key[:-1]}{'A' if key[-1] != 'A' else 'B'}")


def test_api_key_refuses_a_broken_file_and_an_empty_principal(tmp_path: Path) -> None:
    path = tmp_path / "api-keys.json"
    path.write_text("{not json")
    done = fedmcp("api", "--principal", "svc:ci", "--file", str(path))
    assert done.returncode != 0 and "not JSON" in done.stderr and not done.stdout
    assert path.read_text() == "{not json"
    assert fedmcp("api", "--principal", " ", "--file", str(tmp_path / "x.json")).returncode != 0
    assert fedmcp("api", "--file", str(tmp_path / "x.json")).returncode != 0
    assert not (tmp_path / "x.json").exists()


def test_identity_writes_a_key_pair_the_edge_and_adapters_load(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    done = fedmcp("identity", "--out", str(out))
    assert done.returncode == 0, done.stderr
    private, public = out / "edge-identity.pem", out / "edge-identity.pub.pem"
    assert str(private) in done.stdout and str(public) in done.stdout
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"PRIVATE" not in public.read_bytes()

    key = load_private_key(private)
    trusted = load_public_keys(str(public))
    assert len(trusted) == 1
    token = Signer(key, issuer="edge").assertion(Principal(id="alice", scopes=("a",)), "time")
    assert Verifier(trusted).verify(token, "time") == Principal(id="alice", scopes=("a",))
    assert jwt.get_unverified_header(token)["alg"] == "EdDSA"

    # Another name; an existing key is never overwritten.
    named = fedmcp("identity", "--out", str(out), "--name", "east-edge")
    assert named.returncode == 0, named.stderr
    assert (out / "east-edge.pem").exists() and (out / "east-edge.pub.pem").exists()
    before = private.read_bytes()
    again = fedmcp("identity", "--out", str(out))
    assert again.returncode != 0 and "already exists" in again.stderr
    assert private.read_bytes() == before
