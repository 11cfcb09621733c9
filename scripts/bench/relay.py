"""The floor of fedmcp's architecture: the thinnest relay of the same shape, with none of fedmcp's work.

Two processes, as the edge and the adapter, talking over the same nats-server:
- *front*: the edge's HTTP stack (uvicorn, httptools, uvloop through fedmcp.shared.ops_http, with the
  edge's one-write protocol) that sends each POST's body as one NATS request and answers with the
  reply's bytes (a message without an id is answered 202 and dropped);
- *back*: a responder that writes each request to a stdio MCP server as it arrived (the requests of
  one loop iteration in one write) and hands back the server's line with the same JSON-RPC id.
Both use fedmcp's own bus fast path (fedmcp.shared.inline: no task or future per message but the
front's one per call), as the edge and the adapter do.

No validation, routing, policy, audit, metrics, tracing, deadlines, retries or era translation: what is
left is what the hops cost (an HTTP exchange, one bus message each way through nats-server, a pipe
each way) on this machine. The harness measures it as the `relay-floor` setup beside fedmcp: what the
architecture costs here on these frameworks, against what fedmcp's code adds to it.

    python scripts/bench/relay.py front PORT NATS_URL
    python scripts/bench/relay.py back NATS_URL -- COMMAND ARGS...
"""

from __future__ import annotations

import asyncio
import itertools
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `scripts.bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import anyio
import msgspec
from fedmcp.edge.http_protocol import CoalescingHttpToolsProtocol
from fedmcp.shared import bus, runner
from fedmcp.shared.inline import Inline
from fedmcp.shared.ops_http import bind, serve_asgi
from nats.aio.msg import Msg
from starlette.types import Receive, Scope, Send

from scripts.bench.floor import lifespan

SUBJECT = "relay.floor"
_JSON = [(b"content-type", b"application/json")]


class _Id(msgspec.Struct):
    id: int | str | None = None


_ids = msgspec.json.Decoder(_Id)


def front(port: int, url: str) -> None:
    async def main() -> None:
        nc = await bus.connect(url, name="relay-front")
        inline = Inline.of(nc)
        inbox = nc.new_inbox()
        waiting: dict[str, asyncio.Future[bytes]] = {}
        tokens = itertools.count()

        def answered(msg: Msg) -> None:
            future = waiting.pop(msg.subject, None)
            if future is not None and not future.done():
                future.set_result(msg.data)

        await inline.subscribe(f"{inbox}.*", answered)
        loop = asyncio.get_running_loop()

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "lifespan":
                await lifespan(receive, send)
                return
            body = b""
            more = True
            while more:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
            if _ids.decode(body).id is None:
                await send({"type": "http.response.start", "status": 202, "headers": []})
                await send({"type": "http.response.body", "body": b""})
                return
            reply = f"{inbox}.{next(tokens)}"
            waiting[reply] = future = loop.create_future()
            inline.post(SUBJECT, body, reply=reply)
            try:
                with anyio.fail_after(30):
                    data = await future
            finally:
                waiting.pop(reply, None)  # (gone already when answered)
            length = (b"content-length", str(len(data)).encode())
            await send({"type": "http.response.start", "status": 200, "headers": [*_JSON, length]})
            await send({"type": "http.response.body", "body": data})

        await serve_asgi(app, bind("127.0.0.1", port), stop=anyio.Event(), http=CoalescingHttpToolsProtocol)

    runner.run(main)


def back(url: str, command: list[str]) -> None:
    async def main() -> None:
        nc = await bus.connect(url, name="relay-back")
        inline = Inline.of(nc)
        waiting: dict[int | str, str] = {}
        async with await anyio.open_process(command, stderr=None) as server:
            stdin: asyncio.StreamWriter = server.stdin._stream  # type: ignore[union-attr]  # (as the raw lane)
            lines: list[bytes] = []

            def flush() -> None:
                stdin.writelines(lines)  # the requests of one loop iteration in one write
                lines.clear()

            def request(msg: Msg) -> None:
                key = _ids.decode(msg.data).id
                if key is not None and msg.reply:
                    waiting[key] = msg.reply
                    if not lines:
                        asyncio.get_running_loop().call_soon(flush)
                    lines.extend((msg.data, b"\n"))

            await inline.subscribe(SUBJECT, request, queue="relay")
            assert server.stdout is not None
            buffered = b""
            async for chunk in server.stdout:
                buffered += chunk
                *complete, buffered = buffered.split(b"\n")
                for line in complete:
                    key = _ids.decode(line).id
                    reply = None if key is None else waiting.pop(key, None)  # (a server's notification: no id)
                    if reply is not None:
                        inline.post(reply, line)

    runner.run(main)


if __name__ == "__main__":
    role = sys.argv[1]
    if role == "front":
        front(int(sys.argv[2]), sys.argv[3])
    else:
        back(sys.argv[2], sys.argv[sys.argv.index("--") + 1 :])
