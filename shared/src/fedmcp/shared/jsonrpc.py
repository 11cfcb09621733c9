"""The few JSON-RPC fields fedmcp routes on, decoded without touching the rest.

Payloads cross the bus as the bytes the MCP hop would carry. A request is
decoded with msgspec into `RequestHead`; params stay a plain dict.
"""

from __future__ import annotations

from typing import Any

import msgspec
from mcp.shared.exceptions import MCPError
from pydantic import RootModel

# Spec-defined codes.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
RESOURCE_NOT_FOUND_LEGACY = -32002
# The SDK's own codes for a closed connection and a request timeout.
CONNECTION_CLOSED_SDK = -32000
REQUEST_TIMEOUT_SDK = -32001

# fedmcp's own codes, in the implementation-defined range -32000..-32019.
# (-32000 and -32001 are taken by the SDK for connection closed and timeout.)
UPSTREAM_UNAVAILABLE = -32010
"""No adapter, or the backing server is down or restarting."""
UPSTREAM_TIMEOUT = -32011
"""The request's deadline passed before the backing server answered."""
BUS_PROTOCOL_MISMATCH = -32012
"""A service received a bus message in a protocol version it cannot read."""
UPSTREAM_LOST = -32013
"""The adapter instance holding a non-idempotent call was lost."""
OVERLOADED = -32014
"""Every replica was busy for the bounded wait."""
PAYLOAD_TOO_LARGE = -32015
"""A request or result is larger than the federation's configured payload limit."""
CONSENT_REQUIRED = -32016
"""The tool needs the user's consent and the client can be asked neither by form nor by URL."""
CONSENT_DECLINED = -32017
"""The user declined (or did not give in time) consent for the tool."""
UNAUTHORIZED = -32018
"""An adapter refused the request: no valid identity assertion for its server."""
SESSION_EXPIRED = -32019
"""The adapter instance (or backing session) holding the front session's own backing session of an
`affinity = "session"` server was lost: the front session expired; the client re-initializes."""

RequestId = int | str


class Request(msgspec.Struct, omit_defaults=True):
    method: str
    params: dict[str, Any] | None = None
    id: RequestId | None = None
    jsonrpc: str = "2.0"


class ErrorBody(msgspec.Struct, omit_defaults=True):
    code: int
    message: str
    data: Any = None


class Response(msgspec.Struct, omit_defaults=True):
    id: RequestId | None = None
    result: Any = None
    error: ErrorBody | None = None
    jsonrpc: str = "2.0"


class RawResult(RootModel[dict[str, Any]]):
    """An MCP result kept as the plain JSON object the peer sent (for SDK APIs that want a model)."""


_request_decoder = msgspec.json.Decoder(Request)
_response_decoder = msgspec.json.Decoder(Response)
_encoder = msgspec.json.Encoder()


def decode_request(data: bytes | bytearray) -> Request:
    """msgspec.DecodeError for bytes that are not JSON (not UTF-8, nested too deep included)."""
    try:
        return _request_decoder.decode(data)
    except (UnicodeDecodeError, RecursionError) as exc:
        raise msgspec.DecodeError(f"unreadable JSON: {exc}") from None


def decode_response(data: bytes | bytearray) -> Response:
    """msgspec.DecodeError for bytes that are not JSON (not UTF-8, nested too deep included)."""
    try:
        return _response_decoder.decode(data)
    except (UnicodeDecodeError, RecursionError) as exc:
        raise msgspec.DecodeError(f"unreadable JSON: {exc}") from None


class _FieldsResponse(msgspec.Struct):
    result: dict[str, msgspec.Raw] | None = None
    error: ErrorBody | None = None


_fields_decoder = msgspec.json.Decoder(_FieldsResponse)


def result_fields_of(data: bytes | bytearray) -> dict[str, msgspec.Raw]:
    """The result object of a JSON-RPC response as its members' raw JSON, views into `data` (nothing
    below the top level is decoded or copied); its error raised as MCPError."""
    try:
        response = _fields_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError) as exc:
        raise MCPError(code=INTERNAL_ERROR, message="unreadable JSON-RPC response on the bus") from exc
    if response.error is not None:
        err = response.error
        raise MCPError(code=err.code, message=err.message, data=err.data)
    return response.result or {}


def result_of(data: bytes | bytearray) -> Any:
    """The result of a JSON-RPC response; its error raised as MCPError."""
    try:
        response = decode_response(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MCPError(code=INTERNAL_ERROR, message="unreadable JSON-RPC response on the bus") from exc
    if response.error is not None:
        err = response.error
        raise MCPError(code=err.code, message=err.message, data=err.data)
    return response.result if response.result is not None else {}


def encode_request(method: str, params: dict[str, Any] | None, request_id: RequestId) -> bytes:
    return _encoder.encode(Request(method=method, params=params, id=request_id))


def encode_result(request_id: RequestId | None, result: Any) -> bytes:
    return _encoder.encode({"jsonrpc": "2.0", "id": request_id, "result": result})


LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")


def level_allows(wanted: str | None, level: str) -> bool:
    """Whether a message at `level` is deliverable to a request that asked for `wanted` and above."""
    if wanted not in LOG_LEVELS or level not in LOG_LEVELS:
        return False
    return LOG_LEVELS.index(level) >= LOG_LEVELS.index(wanted)


def encode_notification(method: str, params: dict[str, Any]) -> bytes:
    return _encoder.encode({"jsonrpc": "2.0", "method": method, "params": params})


def encode_error(request_id: RequestId | None, code: int, message: str, data: Any = None) -> bytes:
    """A JSON-RPC error response; `"jsonrpc"` and `"id"` (null when unknown) always present, as the spec requires."""
    return _encoder.encode(
        {"jsonrpc": "2.0", "id": request_id, "error": ErrorBody(code=code, message=message, data=data)}
    )
