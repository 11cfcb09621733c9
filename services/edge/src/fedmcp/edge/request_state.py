"""Sealed `requestState` for input_required round trips (2026-07-28 MRTR).

The client echoes `requestState` byte for byte, so it must be tamper-proof:
AES-GCM with a key shared by every edge replica (`FEDMCP_STATE_KEY`), bound
to the caller's principal and an expiry. Inside is what the retry needs to be
routed by any edge: the backing server, and either the backing server's own
state (stateless backends) or the bus subject of the adapter call that is
waiting for the answer (handshake-era backends blocked mid-call).
"""

from __future__ import annotations

import base64
import os
import time

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SEALED_PREFIX = "fedmcp1."
DEFAULT_TTL = 600.0


class State(msgspec.Struct, kw_only=True, omit_defaults=True):
    server: str
    principal: str
    expires: float
    backend_state: str | None = None
    """The backing server's own requestState (stateless pass-through)."""
    answer_to: str | None = None
    """Bus subject of an adapter waiting mid-call for the client's answer."""
    key: str | None = None
    """The inputRequests key the answer is filed under."""


class InvalidState(Exception):
    pass


def key_from_env() -> bytes:
    raw = os.environ.get("FEDMCP_STATE_KEY")
    if raw:
        key = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        if len(key) not in (16, 24, 32):
            raise ValueError("FEDMCP_STATE_KEY must be 16, 24 or 32 bytes, base64url-encoded")
        return key
    # Without a shared key a retry must come back to this edge process.
    return AESGCM.generate_key(bit_length=256)


class Sealer:
    def __init__(self, key: bytes | None = None, *, ttl: float = DEFAULT_TTL) -> None:
        self._aead = AESGCM(key or key_from_env())
        self.ttl = ttl

    def seal(self, state: State) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, msgspec.json.encode(state), state.principal.encode())
        return SEALED_PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")

    def new(self, *, server: str, principal: str, **fields: str | None) -> str:
        return self.seal(State(server=server, principal=principal, expires=time.time() + self.ttl, **fields))

    def open(self, token: str, *, principal: str) -> State:
        if not token.startswith(SEALED_PREFIX):
            raise InvalidState("not a fedmcp requestState")
        try:
            raw = base64.urlsafe_b64decode(token[len(SEALED_PREFIX) :] + "=" * (-len(token) % 4))
            plain = self._aead.decrypt(raw[:12], raw[12:], principal.encode())
            state = msgspec.json.decode(plain, type=State)
        except (ValueError, InvalidTag, msgspec.DecodeError, msgspec.ValidationError):
            raise InvalidState("requestState is invalid or was issued to someone else") from None
        if state.expires < time.time():
            raise InvalidState("requestState has expired")
        return state
