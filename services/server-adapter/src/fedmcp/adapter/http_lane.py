"""Requests to an HTTP backing server as JSON-RPC bytes, beside the SDK's session.

What raw_lane.py does for stdio servers, for servers over Streamable HTTP. Through the SDK's client a
call costs the adapter about 1.8 ms of CPU (its httpx2 pool probes every idle connection's socket on
each request, and the request and response go through pydantic models); the lane POSTs the request's
bytes with the headers the SDK would send, on an aiohttp session (about 0.2 ms per request on the
bench machine, against 0.65 ms for httpx2 alone), and takes the result raw out of the JSON body or the
SSE stream. What else the server sends on the call's stream goes to the call's own callbacks, in the
order it came, ahead of the result: its notifications to `on_note` (log messages among them: this call's,
however many are in flight), its requests to the client (a handshake-era server's sampling, elicitation
and roots) to `on_request`, whose answer is POSTed back on the session, as the SDK's client does.

Both eras: a 2026-07-28 request stands alone; a handshake-era one carries the session's id (the caller's
headers). Not for calls that want progress (the SDK's session reports it). Answers are mapped
as the SDK's transport maps them (`StreamableHTTPTransport._handle_post_request`): 202 and unexpected
content types are INVALID_REQUEST, a JSON-RPC error body at a 4xx/5xx status is that error, else 404
is METHOD_NOT_FOUND and any other failure status INTERNAL_ERROR; a stream that ends without a
response is resumed with `Last-Event-ID` when its events had ids, as the SDK does, else it is a
closed connection. A redirect is not the lane's to follow (the SDK follows those within the origin):
it raises `Redirected`, and the caller sends the request the SDK's way (the server has not run it).
"""

from __future__ import annotations

import itertools
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import aiohttp
import anyio
import httpcore2
import msgspec
import structlog
from fedmcp.adapter.raw_lane import ID_PREFIX, Reply, client_span, reply_decoder
from fedmcp.shared import chunks, jsonrpc, telemetry
from mcp.client.streamable_http import DEFAULT_RECONNECTION_DELAY_MS, MAX_RECONNECTION_ATTEMPTS, MCP_SESSION_ID
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import MCP_METHOD_HEADER, MCP_NAME_HEADER

log = structlog.get_logger("fedmcp.adapter.http_lane")

_T = TypeVar("_T")
OnNote = Callable[[str, dict[str, Any]], Awaitable[None]]
"""Receives a notification (method, params) the server sent on the call's stream."""
OnRequest = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
"""Answers a request (method, params) the server sent to the client on the call's stream: its result, or
MCPError."""

_encoder = msgspec.json.Encoder()
_CALL_HEADER_PREFIXES = (MCP_METHOD_HEADER.lower(), MCP_NAME_HEADER.lower(), "mcp-param-")
_BASE_HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


class Redirected(Exception):
    """The server answered with a redirect: nothing ran; the request is the SDK path's to send."""


class _Message(msgspec.Struct):
    id: str | int | None = None
    params: dict[str, Any] = {}


_message_decoder = msgspec.json.Decoder(_Message)


class HttpLane:
    def __init__(self, url: str, headers: Mapping[str, str], *, limit: int = chunks.DEFAULT_LIMIT) -> None:
        self.url = url
        self._headers = {**_BASE_HEADERS, **headers}
        self._limit = limit
        self._ids = itertools.count(1)
        self.usable = not _proxied(url)
        """False once the server redirected, or when the environment sends this URL through a proxy
        (which httpx2 honours, and aiohttp only with a netrc lookup in a thread per request): every
        request then goes the SDK's way."""
        # TLS trusted as the SDK's client trusts it (SSL_CERT_FILE/DIR, else the system's store; truststore on macOS).
        connector = aiohttp.TCPConnector(ssl=httpcore2.default_ssl_context())
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None, sock_connect=30.0)
        )

    async def close(self) -> None:
        await self._session.close()

    async def request(
        self,
        method: str,
        params: dict[str, Any] | None,
        *,
        headers: Mapping[str, str],
        timeout: float,
        on_note: OnNote | None = None,
        on_request: OnRequest | None = None,
    ) -> msgspec.Raw:
        """Send one request and return its raw `result`; the server's errors, a timeout (the SDK's
        REQUEST_TIMEOUT_SDK: the stream is closed, which cancels the call at the server) and a lost
        connection (CONNECTION_CLOSED_SDK) are raised as MCPError. `headers`: the request's own (its
        version, method and name, or the session's id)."""
        request_id = f"{ID_PREFIX}{next(self._ids)}"
        meta: dict[str, Any] = dict((params or {}).get("_meta") or {})
        telemetry.inject(meta)
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None or meta:
            message["params"] = {**(params or {}), **({"_meta": meta} if meta else {})}
        body = _encoder.encode(message)
        with client_span(method, params):
            with anyio.move_on_after(timeout) as scope:
                try:
                    calls = _Callbacks(on_note, on_request)
                    return await self._exchange(body, {**self._headers, **headers}, calls)
                except (aiohttp.ClientError, OSError) as exc:
                    raise MCPError(code=jsonrpc.CONNECTION_CLOSED_SDK, message=f"Connection closed: {exc}") from None
            assert scope.cancelled_caught
            raise MCPError(code=jsonrpc.REQUEST_TIMEOUT_SDK, message=f"Timed out after {timeout}s")

    async def _exchange(self, body: bytes, headers: dict[str, str], calls: _Callbacks) -> msgspec.Raw:
        response = await self._session.post(self.url, data=body, headers=headers, allow_redirects=False)
        answered = await _finished(response, self._answer(response, headers, calls))
        last_id = retry_ms = None
        for attempt in itertools.count():
            if isinstance(answered, msgspec.Raw):
                return answered
            last_id, retry_ms = answered[0] or last_id, answered[1] if answered[1] is not None else retry_ms
            if last_id is None:
                raise MCPError(code=jsonrpc.CONNECTION_CLOSED_SDK, message="SSE stream ended without a response")
            if attempt >= MAX_RECONNECTION_ATTEMPTS:
                raise MCPError(
                    code=jsonrpc.CONNECTION_CLOSED_SDK,
                    message="SSE stream ended and reconnection attempts were exhausted",
                )
            await anyio.sleep((retry_ms if retry_ms is not None else DEFAULT_RECONNECTION_DELAY_MS) / 1000)
            resume = {k: v for k, v in headers.items() if k != "content-type"} | {"last-event-id": last_id}
            response = await self._session.get(self.url, headers=resume, allow_redirects=False)
            if response.status != 200 or not _content_type(response).startswith("text/event-stream"):
                response.close()
                raise MCPError(code=jsonrpc.CONNECTION_CLOSED_SDK, message="SSE stream could not be resumed")
            answered = await _finished(response, self._events(response, headers, calls))
        raise AssertionError("unreachable")

    async def _answer(
        self, response: aiohttp.ClientResponse, headers: Mapping[str, str], calls: _Callbacks
    ) -> msgspec.Raw | tuple[str | None, int | None]:
        status = response.status
        content_type = _content_type(response)
        if status == 202:
            raise MCPError(code=jsonrpc.INVALID_REQUEST, message="server answered a request with 202 Accepted")
        if 300 <= status < 400 and "location" in response.headers:
            self.usable = False
            log.info("backing server redirects; its requests go through the SDK", url=self.url, status=status)
            raise Redirected(response.headers["location"])
        if status >= 400:
            if content_type.startswith("application/json"):
                try:
                    reply = reply_decoder.decode(await self._read(response))
                except (msgspec.DecodeError, msgspec.ValidationError, MCPError):
                    reply = None
                if reply is not None and reply.error is not None:
                    raise MCPError(code=reply.error.code, message=reply.error.message, data=reply.error.data)
            if status == 404 and MCP_SESSION_ID in headers:
                raise MCPError(code=jsonrpc.INVALID_REQUEST, message="Session terminated")
            if status == 404:  # no session: the HTTP spelling of METHOD_NOT_FOUND
                raise MCPError(code=jsonrpc.METHOD_NOT_FOUND, message="Not Found")
            raise MCPError(code=jsonrpc.INTERNAL_ERROR, message="Server returned an error response")
        if content_type.startswith("application/json"):
            data = await self._read(response)
            try:
                return _result(reply_decoder.decode(data))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise MCPError(code=jsonrpc.PARSE_ERROR, message=f"Failed to parse JSON response: {exc}") from None
        if content_type.startswith("text/event-stream"):
            return await self._events(response, headers, calls)
        raise MCPError(code=jsonrpc.INVALID_REQUEST, message=f"Unexpected content type: {content_type}")

    async def _handle(self, method: str, message: _Message, headers: Mapping[str, str], calls: _Callbacks) -> None:
        """A message of the server's on the call's stream: a notification, or a request to the client,
        answered on the session with a POST of its own (as the SDK's client answers, 202 expected)."""
        if message.id is None:
            if calls.on_note is not None:
                await calls.on_note(method, message.params)
            return
        if method == "ping":
            answer = jsonrpc.encode_result(message.id, {})
        elif calls.on_request is None:
            answer = jsonrpc.encode_error(message.id, jsonrpc.METHOD_NOT_FOUND, "Method not found")
        else:
            try:
                answer = jsonrpc.encode_result(message.id, await calls.on_request(method, message.params))
            except MCPError as exc:
                answer = jsonrpc.encode_error(message.id, exc.error.code, exc.error.message, exc.error.data)
        # The session's headers, not the call's: an answer is no tools/call (as the SDK's client sends it).
        session = {k: v for k, v in headers.items() if not k.lower().startswith(_CALL_HEADER_PREFIXES)}
        reply = await self._session.post(self.url, data=answer, headers=session, allow_redirects=False)
        reply.release()
        if reply.status >= 400:
            log.info("backing server refused the answer to its request", method=method, status=reply.status)

    async def _read(self, response: aiohttp.ClientResponse) -> bytearray:
        """The whole body, refused past the limit (before reading it when its length is announced); kept
        as read (a result decoded from it is a view into it, not a copy)."""
        if response.content_length is not None and response.content_length > self._limit:
            raise _too_large(response.content_length, self._limit)
        data = bytearray()
        async for piece in response.content.iter_any():
            data += piece
            if len(data) > self._limit:
                raise _too_large(len(data), self._limit)
        return data

    async def _events(
        self, response: aiohttp.ClientResponse, headers: Mapping[str, str], calls: _Callbacks
    ) -> msgspec.Raw | tuple[str | None, int | None]:
        """The result from an SSE stream, what came before it handed on; or, when the stream ends
        without one, the last event id and retry hint seen (for resuming)."""
        events = EventStream(self._limit)
        try:
            async for piece in response.content.iter_any():
                for event in events.feed(piece):
                    if event.type != "message" or not event.data:
                        continue  # a priming event (an id, no data), or a kind MCP does not send
                    try:
                        reply = reply_decoder.decode(event.data)
                    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                        raise MCPError(
                            code=jsonrpc.PARSE_ERROR, message=f"Failed to parse SSE message: {exc}"
                        ) from None
                    if reply.method is None:
                        return _result(reply)
                    await self._handle(reply.method, _message_decoder.decode(event.data), headers, calls)
        except EventTooLarge as exc:
            raise MCPError(code=jsonrpc.CONNECTION_CLOSED_SDK, message=f"SSE stream failed: {exc}") from None
        except aiohttp.ClientPayloadError:
            pass  # cut off mid-stream: resumable, as a clean end is
        return events.last_id, events.retry


async def _finished(response: aiohttp.ClientResponse, answer: Awaitable[_T]) -> _T:
    """`answer`, read from `response`; then the connection goes back to the pool if the body was read
    to its end, and is dropped otherwise (an error, a timeout, a cancel): a 2026-07-28 server takes a
    dropped stream as the call's cancellation."""
    try:
        answered = await answer
    except BaseException:
        response.close()
        raise
    response.release()
    return answered


class _Callbacks(msgspec.Struct):
    on_note: OnNote | None
    on_request: OnRequest | None


def _result(reply: Reply) -> msgspec.Raw:
    outcome = reply.outcome()
    if isinstance(outcome, MCPError):
        raise outcome
    return outcome


def _proxied(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    proxies = urllib.request.getproxies()
    return bool(proxies.get(urllib.parse.urlsplit(url).scheme) or proxies.get("all")) and not (
        urllib.request.proxy_bypass(host)
    )


def _content_type(response: aiohttp.ClientResponse) -> str:
    return response.headers.get("content-type", "").lower()


def _too_large(size: int, limit: int) -> MCPError:
    return MCPError(code=jsonrpc.PAYLOAD_TOO_LARGE, message=chunks.too_large_message(size, limit))


# -- text/event-stream ----------------------------------------------------------------------------
class Event(msgspec.Struct):
    type: str
    data: bytes


class EventTooLarge(Exception):
    pass


class EventStream:
    """The WHATWG event-stream format, parsed incrementally from bytes (aiohttp has no SSE client and
    the maintained SSE parsers are for httpx or servers). Lines end in CRLF, LF or CR; `data` lines
    join with LF; `event`, `id` and `retry` as the standard says; comments (pings) are skipped."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._buffer = bytearray()
        self._scanned = 0
        """Bytes of the buffer known to hold no line end (each byte is searched once: a large event
        arriving in many pieces costs linear time)."""
        self._data: list[bytes] = []
        self._size = 0
        self._type = ""
        self.last_id: str | None = None
        self.retry: int | None = None

    def feed(self, piece: bytes) -> list[Event]:
        buffer = self._buffer
        buffer += piece
        events: list[Event] = []
        start = 0
        while True:
            end = _line_end(buffer, max(start, self._scanned))
            if end < 0:
                self._scanned = len(buffer)
                break
            stop = end
            if buffer[end] == 0x0D:  # CR: a CRLF, unless it is the buffer's last byte (wait for more)
                if end + 1 == len(buffer):
                    self._scanned = end
                    break
                if buffer[end + 1] == 0x0A:
                    end += 1
            event = self._line(buffer, start, stop)
            if event is not None:
                events.append(event)
            start = self._scanned = end + 1
        if start:
            del buffer[:start]
            self._scanned -= start
        if self._size + len(buffer) > self._limit:
            raise EventTooLarge(f"an event is larger than {self._limit} bytes")
        return events

    def _line(self, buffer: bytearray, start: int, stop: int) -> Event | None:
        """The line `buffer[start:stop]`; its value is copied out once (a data line may be the whole result)."""
        if start == stop:
            return self._dispatch()
        if buffer[start] == 0x3A:  # ":": a comment
            return None
        colon = buffer.find(b":", start, stop)
        name = bytes(buffer[start : stop if colon < 0 else colon])
        begin = stop if colon < 0 else colon + 1
        if begin < stop and buffer[begin] == 0x20:
            begin += 1
        with memoryview(buffer) as view:
            value = bytes(view[begin:stop])
        if name == b"data":
            self._data.append(value)
            self._size += len(value) + 1
        elif name == b"event":
            self._type = value.decode("utf-8", "replace")
        elif name == b"id":
            if b"\0" not in value:
                self.last_id = value.decode("utf-8", "replace")
        elif name == b"retry" and value.isdigit():
            self.retry = int(value)
        return None

    def _dispatch(self) -> Event | None:
        data, kind = self._data, self._type or "message"
        self._data, self._size, self._type = [], 0, ""
        if not data:
            return None
        return Event(kind, data[0] if len(data) == 1 else b"\n".join(data))


def _line_end(buffer: bytearray, start: int) -> int:
    """Index of the first CR or LF at or after `start`, or -1."""
    lf = buffer.find(b"\n", start)
    cr = buffer.find(b"\r", start, lf if lf >= 0 else len(buffer))
    return cr if cr >= 0 else lf
