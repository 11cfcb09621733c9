"""First line of defence on the MCP endpoint: size and JSON-RPC shape, before the SDK sees a body.

Both eras then get the same, spec-given answers: unparsable JSON is -32700,
anything that is not one JSON-RPC 2.0 message object is -32600, an oversize
body is HTTP 413. The SDK would answer the handshake-era shape errors with a
-32602 carrying pydantic's text; clients deserve the JSON-RPC code and a short
message instead.
"""

from __future__ import annotations

from typing import Any

import msgspec
from fedmcp.shared import jsonrpc
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_decoder = msgspec.json.Decoder()


def shape_error(message: Any) -> str | None:
    """Why `message` is not one JSON-RPC 2.0 request, notification or response; None if it is."""
    if isinstance(message, list):
        return "batches are not supported: send one JSON-RPC message per request"
    if not isinstance(message, dict):
        return "the body must be a JSON-RPC message object"
    if message.get("jsonrpc") != "2.0":
        return 'the "jsonrpc" member must be "2.0"'
    if ("id" in message and not isinstance(message["id"], str | int)) or isinstance(message.get("id"), bool):
        return 'the "id" member must be a string or an integer'
    if "method" in message:
        if not isinstance(message["method"], str):
            return 'the "method" member must be a string'
        if "params" in message and not isinstance(message["params"], dict):
            return 'the "params" member must be an object'
        return None
    if "id" not in message or ("result" in message) == ("error" in message):
        return "a JSON-RPC message needs a method, or an id with exactly one of result and error"
    return None


async def _send_json(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class JsonRpcGuard:
    def __init__(self, app: ASGIApp, *, path: str, max_body_bytes: int) -> None:
        self.app = app
        self.path = path
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"].rstrip("/") != self.path.rstrip("/"):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                body = jsonrpc.encode_error(
                    None, jsonrpc.INVALID_REQUEST, f"request body exceeds {self.max_body_bytes} bytes"
                )
                await _send_json(send, 413, body)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        raw = b"".join(chunks)
        try:
            parsed = _decoder.decode(raw)
        except msgspec.DecodeError:
            await _send_json(send, 400, jsonrpc.encode_error(None, jsonrpc.PARSE_ERROR, "Parse error: invalid JSON"))
            return
        problem = shape_error(parsed)
        if problem is not None:
            await _send_json(
                send, 400, jsonrpc.encode_error(None, jsonrpc.INVALID_REQUEST, f"Invalid Request: {problem}")
            )
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
