"""The adapter service: serves one backing server's requests from its NATS queue group.

Flow of one request (see docs/architecture.md):
  edge publishes JSON-RPC bytes on `rpc.<server>` with a reply subject ->
  any adapter of the queue group picks it up -> forwards it to the backing
  server -> publishes the JSON-RPC response. It answers `accept` before the
  call reaches the backing server, so that a crash leaves the edge knowing
  the call may have run; a call the edge marked safe to run twice is instead
  accepted only if it is still running after ACCEPT_DELAY (or is about to send
  anything else), and a quick one costs one message: its result.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

import anyio
import msgspec
import structlog
from anyio.abc import TaskGroup
from fedmcp.adapter.backend import Backend, BackendUnavailable
from fedmcp.adapter.connection import CallHooks
from fedmcp.adapter.pinned import Pinned, PinnedSessions
from fedmcp.adapter.raw_lane import Pending
from fedmcp.shared import chunks, discovery, envelopes, headers, identity, jsonrpc, metrics, natsguard, telemetry
from fedmcp.shared.audit import Audit, AuditEvent
from fedmcp.shared.config import BackingServer
from fedmcp.shared.envelopes import Announce, Catalog, Heartbeat, Instance, ServerSettings
from fedmcp.shared.identity import IdentityError, Verifier
from fedmcp.shared.inline import Inline
from fedmcp.shared.subjects import Subjects
from mcp.shared.exceptions import MCPError
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

TRUSTED_KEYS_ENV = "FEDMCP_TRUSTED_EDGE_KEYS"
"""Comma-separated PEM files of the edges' identity public keys; set, every request must carry a valid assertion."""

log = structlog.get_logger("fedmcp.adapter")

SERVED_METHODS = frozenset(
    {
        "tools/call",
        "tools/list",
        "resources/read",
        "resources/list",
        "resources/templates/list",
        "prompts/get",
        "prompts/list",
        "completion/complete",
        "resources/subscribe",
        "resources/unsubscribe",
    }
)


ACCEPT_DELAY = 0.25
"""Seconds an idempotent call may run before its `accept` goes out (at most half of what is left of its
accept-by time). Well past what a call waits in a loaded server's queue (tens of ms at c=64: at 20 ms most
calls there sent an accept, one more message through the bus each), and well within the edge's accept
window (2 s), whose expiry only makes the edge send an idempotent call again."""


@dataclass
class _Call:
    """One call being served; its reply subject moves when a client's retry lands on another edge."""

    reply: str | None
    deadline: float
    accepted: bool = False
    """Whether the edge has been told (or is about to be) that this instance runs the call."""
    timer: asyncio.TimerHandle | None = None
    """The pending accept."""


class _SessionGone(Exception):
    """The front session's own backing session is lost: answered `gone`, and the front session expires."""


def _capabilities(raw: str | None) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        caps = msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return None
    return caps if isinstance(caps, dict) else None


def new_instance_id() -> str:
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname())[:24]
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Adapter:
    def __init__(
        self,
        nc: NATS,
        name: str,
        config: BackingServer,
        *,
        subjects: Subjects | None = None,
        region: str = "local",
        instance_id: str | None = None,
        heartbeat_interval: float = 2.0,
        default_timeout: float = 60.0,
        restart_wait: float = 5.0,
        drain_timeout: float = 30.0,
        version: str = "0.1.0",
        max_payload_bytes: int = chunks.DEFAULT_LIMIT,
        max_concurrency: int | None = None,
        verifier: Verifier | None = None,
    ) -> None:
        self.nc = natsguard.harden(nc)  # a malformed header block from any publisher must not deafen it
        self.bus = Inline.of(nc)
        """Requests and their replies skip nats-py's per-message tasks (shared/inline.py)."""
        self.name = name
        self.subjects = subjects or Subjects()
        self.heartbeat_interval = heartbeat_interval
        self.default_timeout = default_timeout
        self.restart_wait = restart_wait
        self.drain_timeout = drain_timeout
        self.max_payload_bytes = max_payload_bytes
        self.max_concurrency = config.max_concurrency if max_concurrency is None else max_concurrency
        trusted = os.environ.get(TRUSTED_KEYS_ENV)
        self.verifier = verifier or (Verifier(identity.load_public_keys(trusted)) if trusted else None)
        """Checks every request's identity assertion; None (no trusted keys configured) takes any."""
        self.audit: Audit | None = None
        self.instance = Instance(
            server=name,
            instance=instance_id or new_instance_id(),
            region=region,
            version=version,
            started_at=time.time(),
            state="starting",
            settings=ServerSettings(prefix=config.prefix, affinity=config.affinity),
        )
        self.backend = Backend(name, config, self._catalog_changed, self._resource_updated)
        self.pinned = PinnedSessions(name, config) if config.affinity == "session" else None
        """With affinity "session": the backing sessions of one front session each."""
        self._inflight = 0
        metrics.count_from(metrics.labelled(metrics.ADAPTER_INFLIGHT, name), self._inflight_now)
        self._events = 0
        """Resource updates published, for their event ids."""
        self._idle = anyio.Event()
        self._idle.set()
        self._tg: TaskGroup | None = None
        self._ready = anyio.Event()
        self._stop = anyio.Event()
        self._scopes: dict[str, anyio.CancelScope | Pending] = {}
        """In-flight calls by reply subject, so an edge's cancel can reach them."""
        self._rpc_subject = self.subjects.rpc(name)
        self._asks = 0
        self._reply_headers = {
            kind: self.bus.header_block(headers.base({headers.KIND: kind, headers.INSTANCE: self.instance.instance}))
            for kind in (headers.Kind.ACCEPT, headers.Kind.RESULT)
        }
        """The two frames of nearly every call, their headers made once."""
        self.served = 0
        """Requests this instance has taken (spread across replicas is observable)."""
        self.took_work = anyio.Event()
        """Set once the first request arrived (lets tests and drains observe in-flight work)."""

    @property
    def ready(self) -> anyio.Event:
        return self._ready

    # -- control plane ------------------------------------------------------
    async def _catalog_changed(self, catalog: Catalog) -> None:
        self.instance.catalog_digest = catalog.digest()
        self.instance.state = "ready"
        await self._announce()
        self._ready.set()

    async def _announce(self) -> None:
        self.instance.last_seen = time.time()
        self.instance.inflight = self._inflight
        body = envelopes.encode(Announce(instance=self.instance, catalog=self.backend.catalog))
        await self.nc.publish(self.subjects.announce(self.name, self.instance.instance), body, headers=headers.base())

    async def _resource_updated(self, uri: str) -> None:
        self._events += 1
        event = {headers.EVENT_ID: f"{self.instance.instance}-{self._events}"}
        await self.nc.publish(self.subjects.resource_updated(self.name), uri.encode(), headers=headers.base(event))

    async def _heartbeats(self) -> None:
        while True:
            await anyio.sleep(self.heartbeat_interval)
            self.instance.state = self.backend.state if self.instance.state != "draining" else "draining"
            self.instance.inflight = self._inflight
            self.instance.last_seen = time.time()
            body = envelopes.encode(Heartbeat(instance=self.instance))
            await self.nc.publish(
                self.subjects.heartbeat(self.name, self.instance.instance), body, headers=headers.base()
            )

    async def _on_cancel(self, msg: Msg) -> None:
        # Cancelling the scope cancels the SDK request, which tells the backing
        # server (notifications/cancelled on stdio, closing the POST on HTTP).
        scope = self._scopes.get(msg.data.decode(errors="replace"))
        if scope is not None:
            scope.cancel()

    async def _on_ping(self, msg: Msg) -> None:
        """An edge asks whether this instance still holds a call (named by its reply subject)."""
        if msg.reply:
            held = msg.data.decode(errors="replace") in self._scopes
            await self.nc.publish(msg.reply, b"1" if held else b"0", headers=headers.base())

    async def _on_session_close(self, msg: Msg) -> None:
        """An edge ends a front session: close its backing session."""
        closed = self.pinned is not None and self.pinned.close(msg.data.decode(errors="replace"))
        if msg.reply:
            await self.nc.publish(msg.reply, b"1" if closed else b"0", headers=headers.base())

    async def _on_reannounce(self, msg: Msg) -> None:
        if self.backend.catalog is not None:
            await self._announce()

    # -- data plane -----------------------------------------------------------
    def _on_request(self, msg: Msg) -> None:
        # Called in the connection's read loop: hand each request to the task group
        # so slow tool calls do not queue behind each other.
        assert self._tg is not None
        self._inflight += 1
        self.served += 1
        self.took_work.set()
        self._idle = anyio.Event() if self._idle.is_set() else self._idle
        if not self._express(msg):
            self._tg.start_soon(self._serve, msg)

    def _inflight_now(self) -> int:
        return self._inflight

    def _finished(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()

    def _express(self, msg: Msg) -> bool:
        """Serve a plain call to a stdio server without a task of its own: checked, accepted and written
        to the server's stdin here, in the read loop; answered from the raw lane's callback (`_answered`).
        False: `_serve` takes it (any other request, and any that fails a check, which `_serve` answers).
        Not while spans are recorded: a span open across callbacks is what the task path is for."""
        hdrs = msg.headers
        if (
            hdrs is None
            or not msg.reply
            or msg.subject != self._rpc_subject
            or not headers.speaks_our_protocol(hdrs)
            or headers.SESSION in hdrs
            or headers.UPLOAD in hdrs
            or self._inflight > self.max_concurrency
            or telemetry.recording()
        ):
            return False
        left = headers.remaining(hdrs, self.default_timeout)
        accept_by = headers.remaining(hdrs, 1.0, name=headers.ACCEPT_BY)
        if left <= 0 or accept_by <= 0:
            return False
        if self.verifier is not None:
            try:
                self.verifier.verify(hdrs.get(headers.IDENTITY), self.name)
            except IdentityError:
                return False
        try:
            request = jsonrpc.decode_request(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return False
        meta = (request.params or {}).get("_meta")
        if meta is not None and (not isinstance(meta, dict) or "progressToken" in meta):
            return False
        route = self.backend.express(request.method, hdrs.get(headers.FRONT_VERSION))
        if route is None:
            return False
        connection, lane = route
        call = _Call(reply=msg.reply, deadline=anyio.current_time() + left)
        if hdrs.get(headers.IDEMPOTENT):
            self._accept_later(call, accept_by)
        else:
            self._accept(call)
        done = functools.partial(self._answered, msg.reply, call, request, time.perf_counter())
        hooks = CallHooks(
            sink=functools.partial(self._sink, call),
            log_level=hdrs.get(headers.LOG_LEVEL),
            ask=functools.partial(self._ask, call),
            notice=functools.partial(self._notice, call),
        )
        try:
            with telemetry.consumer(hdrs, telemetry.RPC_TEMPLATE, self.name):  # the trace context goes on in `_meta`
                capabilities = _capabilities(hdrs.get(headers.CLIENT_CAPABILITIES))
                pending = connection.submit(
                    lane,
                    request.method,
                    request.params,
                    timeout=left,
                    hooks=hooks,
                    capabilities=capabilities,
                    done=done,
                )
        except Exception:
            log.exception("request failed", server=self.name)
            error = MCPError(code=jsonrpc.INTERNAL_ERROR, message=f"server {self.name!r} could not serve this request")
            done(error)
            return True
        self._scopes[msg.reply] = pending
        return True

    def _answered(
        self,
        key: str,
        call: _Call,
        request: jsonrpc.Request,
        started: float,
        outcome: msgspec.Raw | MCPError | BackendUnavailable | None,
    ) -> None:
        """An express call's outcome (None: the edge cancelled it, nothing to answer)."""
        try:
            self._scopes.pop(key, None)
            if outcome is None:
                self._settle(call, accepted=False)
                log.info("call cancelled by the client", server=self.name)
                return
            if isinstance(outcome, msgspec.Raw):
                body, code = jsonrpc.encode_result(request.id, outcome), None
            else:
                body, code = self._error_answer(request.id, outcome)
            metrics.labelled(metrics.CLIENT_DURATION, self.name, request.method, metrics.outcome(code)).observe(
                time.perf_counter() - started
            )
            self._settle(call)
            if not self._frame(call.reply, headers.Kind.RESULT, body):
                assert self._tg is not None
                self._tg.start_soon(self._reply, call.reply, headers.Kind.RESULT, body)
        except Exception:  # called from the lane's reader: log it here, do not break the reader
            log.exception("request failed", server=self.name)
        finally:
            self._finished()

    async def _serve(self, msg: Msg) -> None:
        try:
            with (
                telemetry.consumer(msg.headers, telemetry.RPC_TEMPLATE, self.name),
                anyio.CancelScope() as scope,
            ):
                if msg.reply:
                    self._scopes[msg.reply] = scope
                await self._serve_one(msg)
            if scope.cancelled_caught:
                log.info("call cancelled by the client", server=self.name)
        except Exception:
            log.exception("request failed", server=self.name)
            # Still an answer, so that the caller does not wait for its deadline (the log has the details).
            with anyio.move_on_after(2), contextlib.suppress(Exception):
                await self._fail(
                    msg, None, jsonrpc.INTERNAL_ERROR, f"server {self.name!r} could not serve this request"
                )
        finally:
            if msg.reply:
                self._scopes.pop(msg.reply, None)
            self._finished()

    def _frame(self, to: str | None, kind: str, payload: bytes = b"") -> bool:
        """Send a frame that fits one message now; False (nothing sent) for one that does not: `_reply` it."""
        if len(payload) > chunks.chunk_size(self.nc.max_payload):
            return False
        if to:
            block = self._reply_headers.get(kind)
            if block is None:
                block = self.bus.header_block(
                    headers.base({headers.KIND: kind, headers.INSTANCE: self.instance.instance})
                )
            self.bus.post(to, payload, headers=block)
        return True

    async def _reply(self, to: str | None, kind: str, payload: bytes = b"") -> None:
        if not to or self._frame(to, kind, payload):
            return
        hdrs = headers.base({headers.KIND: kind, headers.INSTANCE: self.instance.instance})
        size = chunks.chunk_size(self.nc.max_payload)
        if len(payload) > self.max_payload_bytes:
            error = jsonrpc.encode_error(
                None, jsonrpc.PAYLOAD_TOO_LARGE, chunks.too_large_message(len(payload), self.max_payload_bytes)
            )
            await self.nc.publish(to, error, headers=hdrs)
            return
        chunk_hdrs = headers.base(
            {
                headers.KIND: headers.Kind.CHUNK,
                headers.INSTANCE: self.instance.instance,
                headers.SIZE: str(len(payload)),
            }
        )
        # One piece at a time (nats-py flushes its buffer as it fills): a copy of the whole payload in
        # pieces would double the adapter's memory for a large result.
        pieces = chunks.split(payload, size)
        piece = next(pieces)
        for following in pieces:
            await self.nc.publish(to, piece, headers=chunk_hdrs)
            piece = following
        await self.nc.publish(to, piece, headers=hdrs)

    async def _serve_one(self, msg: Msg) -> None:
        if not headers.speaks_our_protocol(msg.headers):
            got = (msg.headers or {}).get(headers.BUS, "none")
            ours = headers.base()[headers.BUS]
            message = f"adapter speaks fedmcp bus protocol {ours}, request has {got}"
            await self._fail(msg, None, jsonrpc.BUS_PROTOCOL_MISMATCH, message)
            return
        left = headers.remaining(msg.headers, self.default_timeout)
        if left <= 0:
            # The caller has given up already (e.g. a request buffered during a reconnect).
            log.info("dropped expired request", server=self.name)
            return
        if headers.remaining(msg.headers, 1.0, name=headers.ACCEPT_BY) <= 0:
            # Too late to take: the edge sends it again elsewhere, so taking it could run it twice.
            log.info("dropped request past its accept-by time", server=self.name)
            return
        if self.verifier is not None:
            try:
                self.verifier.verify((msg.headers or {}).get(headers.IDENTITY), self.name)
            except IdentityError as exc:
                # Not accepted, so the edge does not send it elsewhere: the caller gets this refusal.
                metrics.AUTH_DENIED.labels("adapter", "identity").inc()
                log.warning("request refused", server=self.name, reason=str(exc))
                if self.audit is not None:
                    await self.audit.record(
                        AuditEvent(kind="denied", server=self.name, outcome="identity", reason=str(exc))
                    )
                await self._fail(msg, None, jsonrpc.UNAUTHORIZED, f"refused by server {self.name!r}: {exc}")
                return
        session = (msg.headers or {}).get(headers.SESSION)
        on_pinned_subject = msg.subject != self.subjects.rpc(self.name)
        pin: Pinned | None = None
        if on_pinned_subject:
            # Only the instance that holds the front session's backing session may serve it.
            pin = self.pinned.get(session) if self.pinned is not None and session else None
            if pin is None:
                await self._reply(msg.reply, headers.Kind.GONE)
                return
        if self._inflight > self.max_concurrency:
            await self._reply(msg.reply, headers.Kind.BUSY)
            return
        if pin is None and session and self.pinned is not None:
            pin = self.pinned.open(session)
            if pin is None:  # at max_sessions: another replica may have room
                await self._reply(msg.reply, headers.Kind.BUSY)
                return
        call = _Call(reply=msg.reply, deadline=anyio.current_time() + left)
        hdrs = msg.headers or {}
        if hdrs.get(headers.IDEMPOTENT) and not session and headers.UPLOAD not in hdrs:
            # (A pin is learnt from the accept, and an upload may outlast the accept-by time.)
            self._accept_later(call, headers.remaining(hdrs, 1.0, name=headers.ACCEPT_BY))
        else:
            self._accept(call)
        try:
            data = await self._body(msg, left)
        except MCPError as exc:
            await self._fail(msg, None, exc.error.code, exc.error.message, call=call)
            return
        try:
            request = jsonrpc.decode_request(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await self._fail(msg, None, jsonrpc.INVALID_REQUEST, str(exc), call=call)
            return
        if request.method not in SERVED_METHODS:
            await self._fail(
                msg, request.id, jsonrpc.METHOD_NOT_FOUND, f"method {request.method!r} is not served", call=call
            )
            return
        if "_meta" in (request.params or {}) and not isinstance((request.params or {})["_meta"], dict):
            # The SDK writes into `_meta` when it sends the request on: anything but an object breaks it.
            await self._fail(
                msg, request.id, jsonrpc.INVALID_PARAMS, 'the "_meta" member of params must be an object', call=call
            )
            return
        try:
            body = await self._forward(request, call, msg.headers or {}, pin, first=not on_pinned_subject)
        except _SessionGone:
            self._accept(call)
            await self._reply(call.reply, headers.Kind.GONE)
            return
        self._settle(call)
        await self._reply(call.reply, headers.Kind.RESULT, body)

    def _accept(self, call: _Call) -> None:
        """Tell the edge this instance runs the call, before any frame of it but the result."""
        self._settle(call, accepted=False)
        if not call.accepted:
            call.accepted = True
            self._frame(call.reply, headers.Kind.ACCEPT)

    def _accept_later(self, call: _Call, accept_by_left: float) -> None:
        def accept_now() -> None:
            call.timer = None
            if not call.accepted:
                call.accepted = True
                with contextlib.suppress(NatsError):  # the connection is closing: the edge retries
                    self._frame(call.reply, headers.Kind.ACCEPT)

        # A timer, not a task per call: most calls end first and cancel it. (nats-py runs on asyncio.)
        call.timer = asyncio.get_running_loop().call_later(min(ACCEPT_DELAY, accept_by_left / 2), accept_now)

    def _settle(self, call: _Call, *, accepted: bool = True) -> None:
        """No accept pending any more; `accepted`: the result about to go says it."""
        if call.timer is not None:
            call.timer.cancel()
            call.timer = None
        call.accepted = call.accepted or accepted

    async def _fail(
        self, msg: Msg, request_id: jsonrpc.RequestId | None, code: int, message: str, *, call: _Call | None = None
    ) -> None:
        """An error result; for a `call` already taken, it stands for its pending accept."""
        if call is not None:
            self._settle(call)
        await self._reply(msg.reply, headers.Kind.RESULT, jsonrpc.encode_error(request_id, code, message))

    async def _body(self, msg: Msg, left: float) -> bytes | bytearray:
        """The request's JSON-RPC bytes, pulled piece by piece from the edge when they did not fit one message."""
        size_header = (msg.headers or {}).get(headers.UPLOAD)
        if size_header is None:
            return msg.data
        try:
            size = int(size_header) if size_header.isdecimal() else -1
        except ValueError:  # more digits than int() takes
            size = -1
        if size < 0:
            raise MCPError(code=jsonrpc.INVALID_REQUEST, message="the upload size header is not a byte count")
        if size > self.max_payload_bytes:
            raise MCPError(
                code=jsonrpc.PAYLOAD_TOO_LARGE, message=chunks.too_large_message(size, self.max_payload_bytes)
            )
        if not msg.reply:
            raise MCPError(code=jsonrpc.INVALID_REQUEST, message="an upload needs a reply subject")
        body = chunks.Assembler(size)  # held in one buffer of the announced size; more is an error
        index = 0
        stopped = MCPError(code=jsonrpc.INVALID_REQUEST, message="the edge stopped sending the request body")
        try:
            with anyio.fail_after(max(left, 0.1)):
                while body.received < size and not body.overflow:
                    piece = await self.nc.request(
                        msg.reply,
                        b"",
                        timeout=max(0.1, left),
                        headers=headers.base({headers.KIND: headers.Kind.PULL, headers.CHUNK_INDEX: str(index)}),
                    )
                    if not piece.data:
                        raise stopped
                    body.add(piece.data, size_header)
                    index += 1
        except (TimeoutError, NatsError):  # nobody answers on the reply subject, or too late
            raise stopped from None
        if body.overflow:
            raise MCPError(code=jsonrpc.INVALID_REQUEST, message="the request body is larger than announced")
        return body.finish(b"")

    async def _forward(
        self, request: jsonrpc.Request, call: _Call, hdrs: dict[str, str], pin: Pinned | None = None, *, first: bool
    ) -> bytes:
        started = time.perf_counter()
        body, code = await self._forward_measured(request, call, hdrs, pin, first)
        metrics.labelled(metrics.CLIENT_DURATION, self.name, request.method, metrics.outcome(code)).observe(
            time.perf_counter() - started
        )
        return body

    async def _forward_measured(
        self, request: jsonrpc.Request, call: _Call, hdrs: dict[str, str], pin: Pinned | None, first: bool
    ) -> tuple[bytes, int | None]:
        rid = request.id
        left = call.deadline - anyio.current_time()

        sink = functools.partial(self._sink, call)
        ask = functools.partial(self._ask, call)
        notice = functools.partial(self._notice, call)
        try:
            if request.method in ("resources/subscribe", "resources/unsubscribe"):
                uri = str((request.params or {}).get("uri", ""))
                result: Any = await self.backend.subscribe(
                    uri, unsubscribe=request.method.endswith("unsubscribe"), wait_ready=min(left, self.restart_wait)
                )
                return jsonrpc.encode_result(rid, result), None
            with pin.in_use() if pin is not None else contextlib.nullcontext():
                connection = None
                if pin is not None:
                    connection = await pin.wait_ready(left)
                    if connection is None:
                        raise BackendUnavailable(pin.connection.state)
                result = await self.backend.request(
                    request.method,
                    request.params,
                    timeout=left,
                    wait_ready=min(left, self.restart_wait),
                    sink=sink,
                    notice=notice,
                    log_level=hdrs.get(headers.LOG_LEVEL),
                    ask=ask,
                    front_version=hdrs.get(headers.FRONT_VERSION),
                    capabilities=_capabilities(hdrs.get(headers.CLIENT_CAPABILITIES)),
                    connection=connection,
                )
        except BackendUnavailable as exc:
            if pin is not None:
                # A front session's own backing session is never replaced: it is closed, and the
                # front session expires (unless this was its first request: then nothing was kept).
                assert self.pinned is not None
                self.pinned.close(pin.session)
                if not first:
                    raise _SessionGone from exc
                message = f"server {self.name!r} could not open a session for this client ({exc}); try again"
                return jsonrpc.encode_error(rid, jsonrpc.UPSTREAM_UNAVAILABLE, message), jsonrpc.UPSTREAM_UNAVAILABLE
            return self._error_answer(rid, exc)
        except MCPError as exc:
            return self._error_answer(rid, exc)
        return jsonrpc.encode_result(rid, result), None

    def _error_answer(self, rid: jsonrpc.RequestId | None, exc: MCPError | BackendUnavailable) -> tuple[bytes, int]:
        """The error response for a backing server that failed a call, and its code."""
        if isinstance(exc, BackendUnavailable):
            message = f"server {self.name!r} is unavailable ({exc}); try again shortly"
            return jsonrpc.encode_error(rid, jsonrpc.UPSTREAM_UNAVAILABLE, message), jsonrpc.UPSTREAM_UNAVAILABLE
        if exc.error.code == jsonrpc.REQUEST_TIMEOUT_SDK:
            message = f"server {self.name!r} did not answer in time"
            return jsonrpc.encode_error(rid, jsonrpc.UPSTREAM_TIMEOUT, message), jsonrpc.UPSTREAM_TIMEOUT
        error = exc.error
        return jsonrpc.encode_error(rid, error.code, error.message, error.data), error.code

    def _notice(self, call: _Call, method: str, params: dict[str, Any]) -> bool:
        """A notification of the call for the front client, sent now; False if it needs `_sink`."""
        frame = jsonrpc.encode_notification(method, params)
        if len(frame) > chunks.chunk_size(self.nc.max_payload):
            return False
        self._accept(call)
        return self._frame(call.reply, headers.Kind.NOTIFY, frame)

    async def _sink(self, call: _Call, method: str, params: dict[str, Any]) -> None:
        """A notification of the call for the front client."""
        self._accept(call)
        await self._reply(call.reply, headers.Kind.NOTIFY, jsonrpc.encode_notification(method, params))

    async def _ask(self, call: _Call, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Ask the front client through whichever edge holds the call, and follow the call
        to the edge that answers (a 2026-07-28 client retries on any edge)."""
        if call.reply is None:
            raise MCPError(code=jsonrpc.INTERNAL_ERROR, message="the call has no reply subject")
        self._accept(call)
        self._asks += 1
        answer = await self.nc.request(
            call.reply,
            jsonrpc.encode_request(method, params, self._asks),
            timeout=max(0.1, call.deadline - anyio.current_time()),
            headers=headers.base({headers.KIND: headers.Kind.REQUEST, headers.INSTANCE: self.instance.instance}),
        )
        moved_to = (answer.headers or {}).get(headers.REPLY_TO)
        if moved_to:
            call.reply = moved_to
        result: dict[str, Any] = jsonrpc.result_of(answer.data)
        return result

    # -- lifecycle -----------------------------------------------------------
    def stop(self) -> None:
        """Begin a graceful drain; `run` returns when it is done."""
        self._stop.set()

    async def _start_audit(self) -> None:
        """Refusals are audited once the region's audit stream exists (a manager creates it)."""
        audit = Audit(
            self.nc, self.subjects, self.instance.region, edge=self.instance.instance, create=False, patience=120
        )
        try:
            await audit.start()
        except Exception as exc:
            log.warning("no audit stream: refusals are logged only", server=self.name, error=repr(exc))
            return
        self.audit = audit

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as background:
            backend_closed = anyio.Event()

            async def run_backend() -> None:
                await self.backend.run()
                backend_closed.set()

            background.start_soon(run_backend)
            pinned_closed = anyio.Event()
            if self.pinned is not None:
                pinned = self.pinned

                async def run_pinned(*, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
                    await pinned.run(task_status=task_status)
                    pinned_closed.set()

                await background.start(run_pinned)
            else:
                pinned_closed.set()
            if self.verifier is not None:
                background.start_soon(self._start_audit)
            # In-flight requests live in their own group so that a drain can wait
            # for them while the backing connection is still open.
            async with anyio.create_task_group() as work:
                self._tg = work
                reannounce = await self.nc.subscribe(self.subjects.reannounce(self.name), cb=self._on_reannounce)
                cancels = await self.nc.subscribe(self.subjects.cancel(self.name), cb=self._on_cancel)
                pings = await self.nc.subscribe(self.subjects.ping(self.name, self.instance.instance), cb=self._on_ping)
                intake, control = [reannounce], [cancels, pings]
                if self.pinned is not None:
                    me = self.instance.instance
                    intake.append(await self.bus.subscribe(self.subjects.rpc_pinned(self.name, me), self._on_request))
                    control.append(
                        await self.nc.subscribe(self.subjects.session_close(self.name, me), cb=self._on_session_close)
                    )
                micro = await discovery.register(
                    self.nc,
                    discovery.ADAPTER,
                    self.instance.version,
                    {"server": self.name, "instance": self.instance.instance, "region": self.instance.region},
                    f"fedmcp adapter for MCP server {self.name!r}",
                )
                requests = await self.bus.subscribe(
                    self.subjects.rpc(self.name), self._on_request, queue=self.subjects.rpc_queue(self.name)
                )
                await self.nc.flush(timeout=5)
                background.start_soon(self._heartbeats)
                log.info("adapter serving", server=self.name, instance=self.instance.instance)
                task_status.started()
                await self._stop.wait()
                with anyio.CancelScope(shield=True):
                    await self._drain([requests, *intake], control)
                    with anyio.move_on_after(2):
                        await micro.stop()
                    # In-flight work is done: now close the backing sessions gracefully.
                    self.backend.close()
                    if self.pinned is not None:
                        self.pinned.close_all()
                    with anyio.move_on_after(6):
                        await backend_closed.wait()
                        await pinned_closed.wait()
                work.cancel_scope.cancel()
            background.cancel_scope.cancel()

    async def _drain(self, intake: list[Any], control: list[Any]) -> None:
        """Stop taking work, answer what is in flight (still answering cancels and pings
        for it), then say goodbye."""
        self.instance.state = "draining"
        with anyio.move_on_after(5):
            for sub in intake:
                await sub.unsubscribe()
        with anyio.move_on_after(self.drain_timeout):
            await self._idle.wait()
        with anyio.move_on_after(5):
            for sub in control:
                await sub.unsubscribe()
        with anyio.move_on_after(2):
            await self.nc.publish(
                self.subjects.goodbye(self.name, self.instance.instance),
                envelopes.encode(Heartbeat(instance=self.instance)),
                headers=headers.base(),
            )
            await self.nc.flush(timeout=2)
