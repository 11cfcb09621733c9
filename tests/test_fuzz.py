"""Fuzzing with hypothesis: malformed input at every door of a real federation never crashes it.

One federation (manager, demo adapter, HTTP edge on a real nats-server) takes, in one run:

(a) raw HTTP: requests with random methods, paths, content types, Accept, Host, Origin, session
    and era headers (both eras), bodies of random bytes or JSON, over one httpx2 client; and raw
    bytes written to the edge's TCP port (broken request lines and headers);
(b) JSON-RPC messages that are valid JSON but wrong (methods, ids, params, results, `_meta`), in
    a handshake-era session and as 2026-07-28 requests;
(c) malformed NATS messages straight onto the adapter's request subject `fedmcp.rpc.demo`:
    random payloads and headers, wrong bus versions, bad deadlines, accept-by and upload sizes,
    huge header values, non-UTF-8; and header blocks nats-py cannot produce, sent by a raw
    protocol client.

Per input: an HTTP status from the allowed set (never 5xx), a JSON-RPC error code from the spec
where a JSON body comes back, no "Traceback" anywhere; the adapter answers a JSON-RPC response
wherever it answers at all. After the run: no request failed with an exception in the adapter,
its NATS connection never had to reconnect, and the edge and the adapter still serve a real SDK
client's tool call in both eras.

Hypothesis runs in a worker thread (`@given` on a sync function); each example is sent on the
test's event loop through `anyio.from_thread.run`, so failures shrink to a minimal input.
`EXAMPLES` gives the count per family (10,800 in all; the test asserts at least 10,000 ran).

`test_adapter_answers_the_envelopes_that_broke_it` keeps the inputs the fuzzer found as fixed cases.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx2
import pytest
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from conftest import demo_server, federation
from fedmcp.shared import BUS_PROTOCOL_VERSION, bus, headers, jsonrpc
from fedmcp.shared.natsserver import NatsServer
from fedmcp.shared.subjects import Subjects
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client
from nats.aio.msg import Msg

pytestmark = pytest.mark.anyio

EXAMPLES = {
    "http requests": 3600,
    "raw http bytes": 1000,
    "json-rpc legacy session": 1700,
    "json-rpc 2026-07-28": 1700,
    "nats requests": 2500,
    "nats raw header blocks": 300,
}
MODERN = "2026-07-28"
LEGACY = "2025-11-25"

ALLOWED_STATUS = {200, 202, 204, 307, 400, 403, 404, 405, 406, 413, 415, 421, 422, 431}
SPEC_CODES = {
    jsonrpc.PARSE_ERROR,
    jsonrpc.INVALID_REQUEST,
    jsonrpc.METHOD_NOT_FOUND,
    jsonrpc.INVALID_PARAMS,
    jsonrpc.INTERNAL_ERROR,
    jsonrpc.RESOURCE_NOT_FOUND_LEGACY,
    -32020,  # MCP 2026-07-28: header mismatch
    -32021,  # missing required client capability
    -32022,  # unsupported protocol version
    *range(jsonrpc.PAYLOAD_TOO_LARGE, jsonrpc.UPSTREAM_UNAVAILABLE + 1),  # fedmcp's -32015..-32010
}

# -- strategies ---------------------------------------------------------------------------------
TOKEN = st.text(
    alphabet="!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", min_size=1, max_size=24
)
FIELD_BYTES = st.binary(max_size=64).map(
    lambda b: bytes(c for c in b if c == 9 or 0x20 <= c <= 0x7E or c >= 0x80).strip(b" \t")
)
"""Header values h11 lets a client send (visible ASCII, tab, obs-text)."""
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
METHODS = st.sampled_from(
    [
        "initialize",
        "ping",
        "tools/list",
        "tools/call",
        "resources/list",
        "resources/read",
        "resources/templates/list",
        "resources/subscribe",
        "resources/unsubscribe",
        "prompts/list",
        "prompts/get",
        "completion/complete",
        "logging/setLevel",
        "server/discover",
        "tasks/get",
        "tasks/list",
        "tasks/cancel",
        "sampling/createMessage",
        "elicitation/create",
        "roots/list",
        "notifications/initialized",
        "notifications/cancelled",
        "notifications/progress",
        "notifications/roots/list_changed",
        "",
    ]
) | st.text(max_size=24)
# Left out: `subscriptions/listen` and `tasks/result`, which may rightly hold a stream open.
IDS = st.one_of(
    st.integers(),
    st.text(max_size=12),
    st.none(),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.integers(), max_size=2),
    st.just({"x": 1}),
)
TOOL_NAMES = st.sampled_from(["demo_echo", "demo_add", "demo_nope", "", "x" * 300, "demo_echo/../x"]) | st.text(
    max_size=16
)
PARAMS = st.one_of(
    st.none(),
    JSON,
    st.fixed_dictionaries(
        {},
        optional={
            "name": TOOL_NAMES | JSON,
            "arguments": st.dictionaries(st.sampled_from(["text", "a", "b", "x"]), JSON, max_size=3) | JSON,
            "uri": st.sampled_from(["demo://index", "demo://note/a", "file:///etc/passwd", ""]) | st.text(max_size=20),
            "cursor": st.text(max_size=20) | JSON,
            "level": st.sampled_from(["debug", "info", "bogus"]) | JSON,
            "_meta": JSON | st.dictionaries(st.text(max_size=40), JSON, max_size=3),
            "ref": JSON,
            "argument": JSON,
        },
    ),
)


@st.composite
def jsonrpc_messages(draw: st.DrawFn) -> Any:
    """Valid JSON, wrong JSON-RPC (or right, now and then)."""
    shape = draw(st.sampled_from(["request", "request", "request", "notification", "response", "other"]))
    message: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        message["jsonrpc"] = "2.0"
    else:
        message["jsonrpc"] = draw(st.sampled_from(["1.0", "2", 2.0, None]) | JSON)
    if shape in ("request", "notification"):
        message["method"] = draw(METHODS | JSON) if draw(st.integers(0, 15)) == 0 else draw(METHODS)
        params = draw(PARAMS)
        if params is not None or draw(st.booleans()):
            message["params"] = params
    if shape in ("request", "response"):
        message["id"] = draw(IDS)
    if shape == "response":
        if draw(st.booleans()):
            message["result"] = draw(JSON)
        if draw(st.booleans()):
            message["error"] = draw(JSON | st.fixed_dictionaries({"code": JSON, "message": JSON}))
    if shape == "other":
        message = draw(JSON)
    if isinstance(message, dict) and draw(st.integers(0, 7)) == 0:
        message.update(draw(st.dictionaries(st.text(max_size=8), JSON, max_size=2)))
    if draw(st.integers(0, 20)) == 0:
        message = [message]  # a batch
    return message


def meta_for_modern(message: Any, *, proper: bool) -> Any:
    if proper and isinstance(message, dict) and isinstance(message.get("params"), dict | None):
        params = dict(message.get("params") or {})
        params["_meta"] = {
            "io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientCapabilities": {},
        }
        message = {**message, "params": params}
    return message


def body_of(kind: str, data: Any) -> bytes:
    if kind == "json":
        return json.dumps(data).encode()
    if kind == "deep":
        return b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":' + b"[" * data + b"]" * data + b"}"
    if kind == "non-utf8":
        return b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"\xff\xfe' + data + b'"}}'
    return bytes(data)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """Request bodies, weighted towards what reaches the JSON-RPC guard and the SDK."""
    kind = draw(st.integers(0, 99))
    if kind < 35:
        return body_of("json", draw(jsonrpc_messages()))
    if kind < 50:
        return body_of("json", draw(JSON))
    if kind < 65:
        return body_of("bytes", draw(st.binary(max_size=200)))
    if kind < 77:
        return body_of("deep", draw(st.integers(60, 3000)))
    if kind < 89:
        return body_of("non-utf8", draw(st.binary(max_size=8)))
    if kind < 98:
        return b""
    return b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"' + b"x" * (1024 * 1024) + b'"}}'  # > the limit


BODIES = bodies()
OTHER_PATHS = st.sampled_from(
    ["/sse", "/messages/", "/messages/?session_id=zz", "/healthz", "/metrics", "/", "/mcp/x", "/%ff", "/mcp?x=%00"]
) | st.text(alphabet="abcdefghijklmnopqrstuvwxyz/._-%?=&0123456789", max_size=30).map(lambda p: "/" + p)
PATHS = st.integers(0, 9).flatmap(lambda i: st.just("/mcp") if i < 6 else st.just("/mcp/") if i < 7 else OTHER_PATHS)
CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "text/plain",
        "application/x-www-form-urlencoded",
        "",
        "application/json;;;",
        "APPLICATION/JSON",
    ]
)
ACCEPTS = st.sampled_from(
    ["application/json, text/event-stream", "application/json", "text/event-stream", "*/*", "", "text/html"]
)


@st.composite
def http_requests(draw: st.DrawFn) -> tuple[str, str, list[tuple[bytes, bytes]], bytes]:
    method = draw(st.sampled_from(["POST"] * 6 + ["GET", "DELETE", "PUT", "PATCH", "OPTIONS", "HEAD"]))
    path = draw(PATHS)
    hdrs: list[tuple[str, bytes]] = []

    def maybe(name: str, values: st.SearchStrategy[Any], weight: int) -> None:
        """Add header `name` with probability weight/10."""
        if draw(st.integers(0, 9)) >= weight:
            return
        value = draw(values)
        hdrs.append((name, value if isinstance(value, bytes) else str(value).encode()))

    maybe("content-type", CONTENT_TYPES | FIELD_BYTES, 9)
    maybe("accept", ACCEPTS | FIELD_BYTES, 9)
    maybe("mcp-protocol-version", st.sampled_from([MODERN, LEGACY, "2024-11-05", "1999-01-01", ""]) | FIELD_BYTES, 6)
    maybe(
        "mcp-method",
        METHODS.map(lambda m: m.encode("utf-8", "replace").replace(b"\r", b"").replace(b"\n", b"")) | FIELD_BYTES,
        5,
    )
    maybe("mcp-name", TOOL_NAMES.map(lambda m: m.encode("utf-8", "replace").replace(b"\r", b"").replace(b"\n", b"")), 5)
    maybe("mcp-session-id", st.sampled_from(["SESSION", "nope", ""]) | FIELD_BYTES, 5)
    maybe("last-event-id", FIELD_BYTES, 1)
    maybe(
        "origin",
        st.sampled_from(["http://127.0.0.1:1", "http://evil.example", "null", "https://localhost:9"]) | FIELD_BYTES,
        2,
    )
    maybe("host", st.sampled_from(["evil.example", "127.0.0.1", "localhost:1", "[::1]:80"]) | FIELD_BYTES, 1)
    maybe(
        "traceparent",
        st.sampled_from(["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "zz"]) | FIELD_BYTES,
        1,
    )
    for _ in range(draw(st.integers(0, 3))):
        hdrs.append((draw(TOKEN), draw(FIELD_BYTES)))
    if draw(st.integers(0, 40)) == 0:
        hdrs.extend((f"x-many-{i}", b"v") for i in range(draw(st.integers(90, 140))))
    if draw(st.integers(0, 40)) == 0:
        hdrs.append(("x-huge", b"h" * draw(st.integers(8000, 20000))))
    body = draw(BODIES) if method in ("POST", "PUT", "PATCH") or draw(st.integers(0, 5)) == 0 else b""
    return method, path, [(k.encode(), v) for k, v in hdrs], body


@st.composite
def raw_http(draw: st.DrawFn) -> bytes:
    """Bytes on the TCP port: broken request lines, header lines, framing."""
    line = draw(
        st.sampled_from(
            [
                b"POST /mcp HTTP/1.1",
                b"GET /mcp HTTP/1.1",
                b"POST /mcp HTTP/1.0",
                b"POST  /mcp HTTP/1.1",
                b"POST /mcp",
                b"POST /mcp HTTP/9.9",
                b"\x00\x01",
                b"GET / HTTP/1.1",
                b"POST /messages/?session_id=00000000000000000000000000000000 HTTP/1.1",
            ]
        )
        | st.binary(max_size=40)
    )
    lines = [line]
    if draw(st.integers(0, 4)):
        lines.append(
            draw(st.sampled_from([b"Host: 127.0.0.1:{port}", b"Host: evil", b"Host:", b"host: 127.0.0.1:{port}"]))
        )
    for _ in range(draw(st.integers(0, 5))):
        lines.append(
            draw(
                st.sampled_from(
                    [
                        b"Content-Type: application/json",
                        b"Accept: application/json, text/event-stream",
                        b"Content-Length: 5",
                        b"Content-Length: -1",
                        b"Content-Length: 99999999999999999999",
                        b"Content-Length: 2, 3",
                        b"Transfer-Encoding: chunked",
                        b"Transfer-Encoding: gzip, chunked",
                        b" folded: continuation",
                        b"NoColon",
                        b": empty-name",
                        b"Origin: http://evil.example",
                        b"Mcp-Session-Id: \xff\xfe",
                        b"MCP-Protocol-Version: 2026-07-28",
                        b"Mcp-Method: tools/call",
                    ]
                )
                | st.binary(max_size=60)
            )
        )
    terminator = draw(st.sampled_from([b"\r\n", b"\n", b"\r"]))
    body = draw(
        st.sampled_from(
            [
                b"",
                b"{}",
                b'{"jsonrpc":"2.0","id":1,"method":"ping"}',
                b"0\r\n\r\n",
                b"5\r\nhello\r\n0\r\n\r\n",
                b"zz\r\n",
            ]
        )
        | st.binary(max_size=80)
    )
    return terminator.join(lines) + terminator + terminator + body


# -- NATS ---------------------------------------------------------------------------------------
BUS_VERSIONS = st.sampled_from([BUS_PROTOCOL_VERSION] * 6 + ["2", "0", "", "1.0", " 1", "\uff11", "\u00e9"]) | st.text(
    max_size=6
)
MS_VALUES = st.one_of(
    st.sampled_from(
        ["", "abc", "1e3", "-5", "0", "9" * 400, "9" * 5000, "²", "١٢٣", "1_000", "+3", " 7 ", "NaN", "0x10"]
    ),
    st.text(max_size=8),
    st.integers(-(10**30), 10**30).map(str),
)
"""Garbage for the millisecond headers (deadline, accept-by)."""
UPLOADS = st.sampled_from(["abc", "-5", "²", "9" * 5000, "1e3", " 12 ", "0", "99999999999", "१२", ""]) | st.integers(
    0, 3000
).map(str)


@st.composite
def nats_requests(draw: st.DrawFn) -> tuple[dict[str, str], bytes, list[bytes], bool]:
    """Headers, payload, the upload pieces to answer pulls with, and whether the reply subject is unheard.
    A "proper" request (4 in 10) has the right bus version and live times, so that the garbage
    elsewhere reaches the request's handling and the backing server."""
    hdrs: dict[str, str] = {}
    proper = draw(st.integers(0, 9)) < 4
    if proper:
        hdrs[headers.BUS] = BUS_PROTOCOL_VERSION
    elif draw(st.integers(0, 7)):
        hdrs[headers.BUS] = draw(BUS_VERSIONS)
    now_ms = int(time.time() * 1000)
    for name in (headers.DEADLINE, headers.ACCEPT_BY):
        choice = draw(
            st.sampled_from(["none", "future", "garbage"] if proper else ["none", "none", "future", "past", "garbage"])
        )
        if choice == "future":
            hdrs[name] = str(now_ms + draw(st.integers(30_000, 10**12)))
        elif choice == "past":
            hdrs[name] = str(now_ms - draw(st.integers(1_000, 10**12)))
        elif choice == "garbage":
            hdrs[name] = draw(MS_VALUES)
    for name, values in (
        (headers.FRONT_VERSION, st.sampled_from([MODERN, LEGACY, "2024-11-05", "", "zz"]) | st.text(max_size=12)),
        (
            headers.CLIENT_CAPABILITIES,
            st.sampled_from(["{}", "[", "null", '{"sampling":{}}', "[" * 5000 + "]" * 5000]) | JSON.map(json.dumps),
        ),
        (headers.LOG_LEVEL, st.sampled_from(["debug", "emergency", "bogus", ""]) | st.text(max_size=8)),
        (headers.SESSION, st.text(max_size=20)),
        (
            headers.TRACEPARENT,
            st.sampled_from(["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "00-zz", "ff-" + "0" * 60])
            | st.text(max_size=60),
        ),
        (headers.TRACESTATE, st.text(max_size=80)),
        ("baggage", st.text(max_size=80)),
    ):
        if draw(st.integers(0, 1 if proper else 3)) == 0:
            hdrs[name] = draw(values)
    upload = draw(st.integers(0, 5)) == 0
    for _ in range(draw(st.integers(0, 2))):
        hdrs["X-" + draw(TOKEN)] = draw(st.text(max_size=30))
    if draw(st.integers(0, 30)) == 0:
        hdrs["X-Huge"] = "h" * draw(st.integers(10_000, 200_000))
    kinds = ["jsonrpc", "jsonrpc", "valid", "json", "bytes", "deep", "non-utf8"]
    kind = draw(st.sampled_from(["valid"] * 7 + kinds if proper else kinds))
    if kind == "valid":
        body = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": draw(st.integers(0, 1000)),
                "method": draw(
                    st.sampled_from(
                        [
                            "tools/list",
                            "tools/call",
                            "resources/read",
                            "prompts/get",
                            "completion/complete",
                            "ping",
                            "initialize",
                        ]
                    )
                ),
                "params": draw(PARAMS.filter(lambda p: p is None or isinstance(p, dict))),
            }
        ).encode()
    elif kind in ("jsonrpc", "json"):
        body = json.dumps(draw(jsonrpc_messages() if kind == "jsonrpc" else JSON)).encode()
    else:
        body = body_of(
            kind,
            draw(
                st.binary(max_size=200)
                if kind == "bytes"
                else st.integers(10, 5000)
                if kind == "deep"
                else st.binary(max_size=8)
            ),
        )
    pieces: list[bytes] = []
    if upload:
        hdrs[headers.UPLOAD] = str(len(body)) if draw(st.booleans()) else draw(UPLOADS)
        cut = draw(st.integers(1, 64))
        pieces = [body[i : i + cut] for i in range(0, len(body), cut)]
        if draw(st.integers(0, 3)) == 0:
            pieces = pieces[: draw(st.integers(0, len(pieces)))]  # the edge stops sending
        body = b""
    return hdrs, body, pieces, draw(st.integers(0, 19)) == 0


RAW_HEADER_BLOCKS = st.one_of(
    st.sampled_from(
        [
            b"NATS/1.0",
            b"NATS/1.0 \xff\xff\xff\r\n\r\n",
            b"NATS/1.0 503 \xff\xfe\r\nk: v\r\n\r\n",
            b"NATS/1.0 503\r\n\r\n",
            b"NATS/1.0 100 Idle Heartbeat\r\n\r\n",
            b"NATS/1.0\r\n\xff: \xff\r\n\r\n",
            b"NATS/1.0\r\nFedmcp-Bus: 1\r\nFedmcp-Upload: \xff\r\n\r\n",
            b"NATS/1.0\r\nFedmcp-Bus: 1\r\nFedmcp-Deadline: \xff\xfe\r\n\r\n",
            b"NATS/1.0\r\nFedmcp-Bus:1\r\nFedmcp-Bus: 2\r\n\r\n",
            b"NATS/1.0 ",
            b"NATS/1.0 1",
        ]
    ),
    st.binary(max_size=60).map(lambda b: b"NATS/1.0" + b),
    st.binary(max_size=60).map(lambda b: b"NATS/1.0 " + b + b"\r\n\r\n"),
    st.binary(max_size=60).map(lambda b: b"NATS/1.0\r\nFedmcp-Bus: 1\r\n" + b + b"\r\n\r\n"),
)


def expects_answer(hdrs: dict[str, str]) -> bool:
    """Whether the adapter must answer (else it drops the request as expired, which is silent)."""
    seen = {k.strip(): v.strip().translate(str.maketrans({"\r": " ", "\n": " "})) for k, v in hdrs.items()}
    if not headers.speaks_our_protocol(seen):
        return True  # -32012
    return headers.remaining(seen, 60.0) > 0 and headers.remaining(seen, 1.0, name=headers.ACCEPT_BY) > 0


# -- the checks ---------------------------------------------------------------------------------
def short(value: Any, size: int = 400) -> str:
    text = repr(value)
    return text if len(text) <= size else f"{text[:size]}... ({len(text)} chars)"


def check_jsonrpc(doc: Any, where: str) -> None:
    for message in doc if isinstance(doc, list) else [doc]:
        assert isinstance(message, dict), f"{where}: not a JSON-RPC message: {doc!r}"
        if "error" in message:
            code = message["error"].get("code")
            assert code in SPEC_CODES, f"{where}: error code {code!r} is not a spec code: {message!r}"


def check_http_body(response: httpx2.Response, raw: bytes, where: str) -> None:
    assert b"Traceback" not in raw, f"{where}: traceback in the body: {raw[:500]!r}"
    ctype = response.headers.get("content-type", "")
    if ctype.startswith("application/json") and raw:
        check_jsonrpc(json.loads(raw), where)
    elif ctype.startswith("text/event-stream"):
        for event in raw.decode("utf-8", "replace").replace("\r\n", "\n").split("\n\n"):
            data = "\n".join(line[5:].removeprefix(" ") for line in event.split("\n") if line.startswith("data:"))
            if data.strip():
                check_jsonrpc(json.loads(data), where)


async def fuzz(name: str, strategy: st.SearchStrategy[Any], check: Callable[[Any], Awaitable[None]]) -> int:
    """Run `check` on EXAMPLES[name] examples of `strategy`; returns how many ran."""
    ran = 0

    def run() -> None:
        @settings(
            max_examples=EXAMPLES[name],
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(strategy)
        def one(case: Any) -> None:
            nonlocal ran
            ran += 1
            anyio.from_thread.run(check, case)

        one()

    started = time.monotonic()
    await anyio.to_thread.run_sync(run)
    print(f"{name}: {ran} inputs in {time.monotonic() - started:.1f}s", flush=True)
    return ran


async def open_legacy_session(http: httpx2.AsyncClient, url: str) -> str:
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "fuzz", "version": "0"}},
    }
    accept = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    response = await http.post(url, json=init, headers=accept)
    assert response.status_code == 200, response.text
    session: str = response.headers["mcp-session-id"]
    hdrs = {**accept, "Mcp-Session-Id": session, "MCP-Protocol-Version": LEGACY}
    done = await http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=hdrs)
    assert done.status_code == 202
    return session


async def still_serving(url: str) -> None:
    for mode in ("legacy", MODERN):
        async with Client(url, mode=mode) as client:  # type: ignore[arg-type]
            result = await client.call_tool("demo_echo", {"text": f"still here ({mode})"})
            assert result.structured_content == {"result": f"still here ({mode})"}


class Replies:
    """One subscription for every reply subject the fuzzer hands out; frames routed per subject."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.streams: dict[str, MemoryObjectSendStream[Msg]] = {}
        self.n = 0

    def open(self) -> tuple[str, MemoryObjectReceiveStream[Msg]]:
        self.n += 1
        subject = f"{self.prefix}.{self.n}"
        send, receive = anyio.create_memory_object_stream[Msg](100)
        self.streams[subject] = send
        return subject, receive

    def close(self, subject: str) -> None:
        stream = self.streams.pop(subject, None)
        if stream is not None:
            stream.close()

    async def route(self, msg: Msg) -> None:
        stream = self.streams.get(msg.subject)
        if stream is not None:
            with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                stream.send_nowait(msg)


def raw_nats_publisher(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.recv(65536)  # INFO
    sock.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"protocol":1}\r\n')
    return sock


async def test_fuzz_edge_and_adapter(nats_server: NatsServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    ran: dict[str, int] = {}
    with structlog.testing.capture_logs() as logged:
        async with federation(nats_server.url) as fed:
            adapter = await fed.add_server("demo", demo_server())
            served_before = adapter.served
            base = fed.url.removesuffix("/mcp")
            port = int(base.rsplit(":", 1)[1])
            nc = await bus.connect(nats_server.url, name="test-fuzz")
            fed.stack.push_async_callback(nc.close)
            async with httpx2.AsyncClient(timeout=httpx2.Timeout(20.0)) as http:
                session = await open_legacy_session(http, fed.url)

                async def send_http(case: tuple[str, str, list[tuple[bytes, bytes]], bytes]) -> None:
                    method, path, hdrs, body = case
                    hdrs = [(k, session.encode() if v == b"SESSION" else v) for k, v in hdrs]
                    where = f"{method} {path} {short(hdrs)} {short(body)}"
                    try:
                        async with http.stream(method, base + path, headers=hdrs, content=body) as response:
                            assert response.status_code in ALLOWED_STATUS, f"{where}: HTTP {response.status_code}"
                            if (
                                response.headers.get("content-type", "").startswith("text/event-stream")
                                and method == "GET"
                            ):
                                return  # a stream opened for the client: its status is the answer
                            raw = await response.aread()
                    except httpx2.LocalProtocolError:
                        return  # not sendable by an HTTP client; raw bytes cover such input
                    check_http_body(response, raw, where)

                ran["http requests"] = await fuzz("http requests", http_requests(), send_http)

                async def send_raw(data: bytes) -> None:
                    data = data.replace(b"{port}", str(port).encode())
                    answer = b""
                    with anyio.fail_after(10):
                        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                            await stream.send(data)
                            await stream.send_eof()
                            try:
                                while True:
                                    answer += await stream.receive()
                            except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
                                pass
                    assert b"Traceback" not in answer, f"{data!r}: {answer[:500]!r}"
                    if answer.startswith(b"HTTP/"):
                        status = int(answer.split(b" ", 2)[1])
                        assert status in ALLOWED_STATUS, f"{data!r}: HTTP {status}: {answer[:300]!r}"

                ran["raw http bytes"] = await fuzz("raw http bytes", raw_http(), send_raw)

                async def send_legacy(message: Any) -> None:
                    hdrs = {
                        "Accept": "application/json, text/event-stream",
                        "Content-Type": "application/json",
                        "Mcp-Session-Id": session,
                        "MCP-Protocol-Version": LEGACY,
                    }
                    response = await http.post(fed.url, content=json.dumps(message).encode(), headers=hdrs)
                    where = f"legacy {short(message)}"
                    assert response.status_code in ALLOWED_STATUS, f"{where}: HTTP {response.status_code}"
                    check_http_body(response, response.content, where)

                ran["json-rpc legacy session"] = await fuzz("json-rpc legacy session", jsonrpc_messages(), send_legacy)

                async def send_modern(case: tuple[Any, bool, bool]) -> None:
                    message, proper_meta, proper_headers = case
                    message = meta_for_modern(message, proper=proper_meta)
                    hdrs = {
                        "Accept": "application/json, text/event-stream",
                        "Content-Type": "application/json",
                        "MCP-Protocol-Version": MODERN,
                    }
                    if proper_headers and isinstance(message, dict) and isinstance(message.get("method"), str):
                        hdrs["Mcp-Method"] = message["method"].encode("ascii", "replace").decode()
                        name = (
                            (message.get("params") or {}).get("name")
                            if isinstance(message.get("params"), dict)
                            else None
                        )
                        if isinstance(name, str) and name.isascii() and name.isprintable():
                            hdrs["Mcp-Name"] = name
                    where = f"modern {short(hdrs)} {short(message)}"
                    try:
                        response = await http.post(fed.url, content=json.dumps(message).encode(), headers=hdrs)
                    except httpx2.LocalProtocolError:
                        return
                    assert response.status_code in ALLOWED_STATUS, f"{where}: HTTP {response.status_code}"
                    check_http_body(response, response.content, where)

                ran["json-rpc 2026-07-28"] = await fuzz(
                    "json-rpc 2026-07-28", st.tuples(jsonrpc_messages(), st.booleans(), st.booleans()), send_modern
                )

            # (c) straight onto the adapter's request subject.
            rpc = Subjects().rpc("demo")
            replies = Replies(nc.new_inbox())
            await nc.subscribe(f"{replies.prefix}.*", cb=replies.route)
            await nc.flush()

            async def result_of(
                reply: str, frames: MemoryObjectReceiveStream[Msg], pieces: list[bytes], where: str
            ) -> None:
                with anyio.fail_after(15):
                    async for frame in frames:
                        kind = (frame.headers or {}).get(headers.KIND)
                        assert b"Traceback" not in frame.data, f"{where}: {frame.data[:500]!r}"
                        if kind == headers.Kind.PULL:
                            index = int((frame.headers or {}).get(headers.CHUNK_INDEX, "0"))
                            piece = pieces[index] if index < len(pieces) else b""
                            await nc.publish(frame.reply, piece, headers=headers.base())
                        elif kind == headers.Kind.RESULT:
                            response = jsonrpc.decode_response(frame.data)
                            if response.error is not None:
                                assert response.error.code in SPEC_CODES, f"{where}: {frame.data[:300]!r}"
                            return
                        else:
                            assert kind in (headers.Kind.ACCEPT, headers.Kind.NOTIFY, headers.Kind.CHUNK), (
                                f"{where}: {kind}"
                            )
                raise AssertionError(f"{where}: the reply stream ended without a result")

            async def send_nats(case: tuple[dict[str, str], bytes, list[bytes], bool]) -> None:
                hdrs, body, pieces, unheard = case
                reply, frames = replies.open()
                where = f"{short(hdrs)} {short(body)}"
                try:
                    if unheard:  # nobody listens on the reply subject (the final log check covers it)
                        await nc.publish(rpc, body, reply=f"{reply}.unheard", headers=hdrs)
                        return
                    await nc.publish(rpc, body, reply=reply, headers=hdrs)
                    if expects_answer(hdrs):
                        await result_of(reply, frames, pieces, where)
                finally:
                    replies.close(reply)

            ran["nats requests"] = await fuzz("nats requests", nats_requests(), send_nats)

            raw = raw_nats_publisher(nats_server.port)
            probe = jsonrpc.encode_request("tools/list", None, 1)

            async def send_raw_nats(block: bytes) -> None:
                reply, _ = replies.open()
                try:
                    payload = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
                    command = f"HPUB {rpc} {reply} {len(block)} {len(block) + len(payload)}\r\n".encode()
                    raw.sendall(command + block + payload + b"\r\n")
                    # Whatever became of it, the adapter still hears and answers a proper request.
                    probe_reply, probe_frames = replies.open()
                    try:
                        await nc.publish(rpc, probe, reply=probe_reply, headers=headers.base())
                        await result_of(probe_reply, probe_frames, [], f"probe after {block!r}")
                    finally:
                        replies.close(probe_reply)
                finally:
                    replies.close(reply)

            try:
                ran["nats raw header blocks"] = await fuzz("nats raw header blocks", RAW_HEADER_BLOCKS, send_raw_nats)
            finally:
                raw.close()

            await still_serving(fed.url)
            assert adapter.served > served_before
            assert adapter.instance.state == "ready"
            assert adapter.nc.is_connected and adapter.nc.stats["reconnects"] == 0
            assert "demo" in fed.edge_servers()

    total = sum(ran.values())
    print(f"fuzzed {total} inputs: {ran}")
    assert total >= 10_000, ran
    crashed = [entry for entry in logged if entry.get("log_level") in ("error", "critical")]
    assert not crashed, crashed[:5]
    # Nothing in this process (uvicorn, starlette, the SDK, nats-py, the edge) logged an error.
    errors = [(r.name, r.getMessage()[:300]) for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors[:5]


async def test_adapter_answers_the_envelopes_that_broke_it(nats_server: NatsServer) -> None:
    """The inputs the fuzzer found, each answered with its JSON-RPC error, the adapter serving on."""
    ping = b'{"jsonrpc":"2.0","id":7,"method":"tools/list"}'

    def envelope_cases() -> list[tuple[dict[str, str], bytes, int | None]]:
        """Built when sent: one case has a deadline 1.5 s ahead."""
        bus_1 = headers.base()
        return [
            ({}, ping, jsonrpc.BUS_PROTOCOL_MISMATCH),
            ({**bus_1, headers.DEADLINE: "1" + "0" * 400}, ping, None),  # beyond a float: treated as absent
            ({**bus_1, headers.ACCEPT_BY: "9" * 5000}, ping, None),  # beyond int(): treated as absent
            ({**bus_1, headers.UPLOAD: "9" * 5000}, b"", jsonrpc.INVALID_REQUEST),
            ({**bus_1, headers.UPLOAD: "\u00b2"}, b"", jsonrpc.INVALID_REQUEST),  # isdigit() but not int()
            # Nobody sends the pieces: the pull times out at the deadline.
            ({**bus_1, headers.UPLOAD: "10", headers.DEADLINE: headers.deadline_in(1.5)}, b"", jsonrpc.INVALID_REQUEST),
            (bus_1, b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"\xff"}}', jsonrpc.INVALID_REQUEST),
            (
                bus_1,
                b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"a":' + b"[" * 100_000,
                jsonrpc.INVALID_REQUEST,
            ),
            (bus_1, b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":[{}]}}', jsonrpc.INVALID_PARAMS),
            (bus_1, b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":null}}', jsonrpc.INVALID_PARAMS),
            ({**bus_1, headers.CLIENT_CAPABILITIES: "[" * 5000 + "]" * 5000}, ping, None),
        ]

    with structlog.testing.capture_logs() as logged:
        async with federation(nats_server.url) as fed:
            adapter = await fed.add_server("demo", demo_server())
            nc = await bus.connect(nats_server.url, name="test-envelopes")
            fed.stack.push_async_callback(nc.close)
            rpc = Subjects().rpc("demo")
            cases = envelope_cases()
            for hdrs, body, code in cases:
                inbox = nc.new_inbox()
                sub = await nc.subscribe(inbox)
                await nc.publish(rpc, body, reply=inbox, headers=hdrs)
                with anyio.fail_after(15):
                    while True:
                        frame = await sub.next_msg(timeout=15)
                        if (frame.headers or {}).get(headers.KIND) == headers.Kind.PULL:
                            continue  # the edge "stopped sending": no answer to the pull
                        if (frame.headers or {}).get(headers.KIND) == headers.Kind.RESULT:
                            break
                await sub.unsubscribe()
                response = jsonrpc.decode_response(frame.data)
                assert (response.error.code if response.error else None) == code, (hdrs.keys(), body[:80], frame.data)
                assert b"Traceback" not in frame.data
            # A header block nats-py cannot parse: without the guard the adapter's connection went deaf.
            raw = raw_nats_publisher(nats_server.port)
            try:
                for block in (b"NATS/1.0", b"NATS/1.0 \xff\xff\r\n\r\n"):
                    inbox = nc.new_inbox()
                    raw.sendall(
                        f"HPUB {rpc} {inbox} {len(block)} {len(block) + len(ping)}\r\n".encode()
                        + block
                        + ping
                        + b"\r\n"
                    )
                    reply = await nc.request(rpc, ping, timeout=5, headers=headers.base())  # the accept frame
                    assert reply.headers and reply.headers.get(headers.KIND) == headers.Kind.ACCEPT
            finally:
                raw.close()
            assert adapter.nc.stats["reconnects"] == 0
            await still_serving(fed.url)
    assert not [entry for entry in logged if entry.get("log_level") in ("error", "critical")]


async def test_edge_and_manager_hear_on_after_header_blocks_nats_py_cannot_parse(nats_server: NatsServer) -> None:
    """Anyone allowed to publish on an edge's reply subjects or the manager's announce subject could
    stop its read loop with one such block; bus.connect guards every service's connection."""
    async with federation(nats_server.url) as fed:
        await fed.add_server("demo", demo_server())
        assert fed.edge is not None
        subjects = Subjects()
        targets = [subjects.reply(fed.edge.edge_id, "nobody"), subjects.announce("ghost", "g1")]
        raw = raw_nats_publisher(nats_server.port)
        try:
            for subject in targets:
                for block in (b"NATS/1.0", b"NATS/1.0 \xff\xff\r\n\r\n"):
                    raw.sendall(f"HPUB {subject} {len(block)} {len(block) + 2}\r\n".encode() + block + b"{}\r\n")
        finally:
            raw.close()
        with anyio.fail_after(15):  # far less than the ~30 s a deaf connection takes to be declared stale
            await still_serving(fed.url)
            # The manager still registers what is announced: a new server joins the edge's catalog.
            await fed.add_server("late", demo_server())
        assert fed.edge.nc.stats["reconnects"] == 0


async def test_a_flush_that_gave_up_leaves_the_connection_readable(nats_server: NatsServer) -> None:
    """nats-py 2.16: the PONG for a flush that timed out used to stop the read loop (natsguard mends it)."""
    nc = await bus.connect(nats_server.url, name="test-flush")  # bus.connect applies natsguard
    try:
        # A flush given up before its PONG arrives: cancelled where it first waits, so its future is
        # cancelled before the read loop can see the PONG (no race with the server).
        with anyio.CancelScope() as scope:
            scope.cancel()
            await nc.flush(timeout=5)
        assert scope.cancelled_caught
        sub = await nc.subscribe("flush.test")
        await nc.publish("flush.test", b"still reading")
        await nc.flush(timeout=5)  # its PONG comes after the first one: both are read
        assert (await sub.next_msg(timeout=5)).data == b"still reading"
    finally:
        await nc.close()
