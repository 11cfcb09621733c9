"""shared/inline.py against a real nats-server: inline delivery and posting keep nats-py's semantics
(headers, order with `publish`, errors, reconnects) without its per-message tasks."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from fedmcp.shared import bus
from fedmcp.shared.inline import Inline, plain_headers
from fedmcp.shared.natsserver import NatsServer
from hypothesis import given, settings
from hypothesis import strategies as st
from nats import errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

pytestmark = pytest.mark.anyio


class Heard:
    """What an inline handler was given, and a way to wait for the n-th message."""

    def __init__(self) -> None:
        self.msgs: list[Msg] = []
        self._more = anyio.Event()

    def __call__(self, msg: Msg) -> None:
        self.msgs.append(msg)
        self._more.set()

    async def wait_for(self, n: int, timeout: float = 5) -> list[Msg]:
        with anyio.fail_after(timeout):
            while len(self.msgs) < n:
                self._more = anyio.Event()
                await self._more.wait()
        return self.msgs


async def test_posted_messages_reach_a_plain_subscriber_in_order_with_published_ones(nats_server: NatsServer) -> None:
    sender = await bus.connect(nats_server.url, name="test-sender")
    receiver = await bus.connect(nats_server.url, name="test-receiver")
    got: list[Msg] = []
    done = anyio.Event()

    async def collect(msg: Msg) -> None:
        got.append(msg)
        if len(got) == 300:
            done.set()

    await receiver.subscribe("t.order", cb=collect)
    await receiver.flush()
    wire = Inline.of(sender)
    for i in range(100):
        wire.post("t.order", f"post-{i}".encode(), headers={"Fedmcp-Kind": "result", "X-I": str(i)})
        await sender.publish("t.order", f"pub-{i}".encode())
        wire.post("t.order", f"bare-{i}".encode(), reply="t.answer")
    with anyio.fail_after(5):
        await done.wait()
    expected = [body for i in range(100) for body in (f"post-{i}", f"pub-{i}", f"bare-{i}")]
    assert [m.data.decode() for m in got] == expected
    assert got[0].headers == {"Fedmcp-Kind": "result", "X-I": "0"}
    assert got[2].reply == "t.answer" and got[2].headers is None
    await sender.close()
    await receiver.close()


async def test_inline_handler_gets_parsed_headers_and_status_messages(nats_server: NatsServer) -> None:
    nc = await bus.connect(nats_server.url, name="test-inline")
    wire = Inline.of(nc)
    heard = Heard()
    await wire.subscribe("t.replies.*", heard, repeated_headers=True)
    await nc.flush()
    for kind in ("accept", "result", "accept"):
        await nc.publish("t.replies.a", kind.encode(), headers={"Fedmcp-Kind": kind})
    # A request nobody serves: nats-server answers the reply subject with a 503 status.
    wire.post("t.nobody", b"x", reply="t.replies.b", headers={"Fedmcp-Bus": "1"})
    msgs = await heard.wait_for(4)
    assert [(m.subject, m.data, (m.headers or {}).get("Fedmcp-Kind")) for m in msgs[:3]] == [
        ("t.replies.a", b"accept", "accept"),
        ("t.replies.a", b"result", "result"),
        ("t.replies.a", b"accept", "accept"),
    ]
    assert msgs[3].subject == "t.replies.b" and (msgs[3].headers or {}).get("Status") == "503"
    await nc.close()


async def test_a_failing_handler_or_a_malformed_header_block_does_not_stop_the_read_loop(
    nats_server: NatsServer,
) -> None:
    nc = await bus.connect(nats_server.url, name="test-inline")
    wire = Inline.of(nc)
    heard = Heard()

    def handler(msg: Msg) -> None:
        heard(msg)
        if msg.data == b"boom":
            raise RuntimeError("handler bug")

    await wire.subscribe("t.in", handler)
    await nc.flush()
    other = await bus.connect(nats_server.url, name="test-other")
    await other.publish("t.in", b"boom")
    # A header block nats-py cannot parse (no line end after the version), sent as raw protocol.
    other._pending.append(b"HPUB t.in 8 12\r\nNATS/1.0oops\r\n")
    await other.publish("t.in", b"after")
    msgs = await heard.wait_for(3)
    assert [m.data for m in msgs] == [b"boom", b"oops", b"after"]
    assert msgs[1].headers is None
    await other.close()
    await nc.close()


async def test_post_refuses_what_would_break_the_protocol(nats_server: NatsServer) -> None:
    nc = await bus.connect(nats_server.url, name="test-inline")
    receiver = await bus.connect(nats_server.url, name="test-receiver")
    heard = Heard()
    await Inline.of(receiver).subscribe(">", heard)
    await receiver.flush()
    wire = Inline.of(nc)
    with pytest.raises(errors.BadSubjectError):
        wire.post("t.a b", b"")
    with pytest.raises(errors.BadSubjectError):
        wire.post("t.a", b"", reply="x\r\nPUB t.evil 0\r\n")
    with pytest.raises(errors.BadHeaderError):
        wire.post("t.a", b"", headers={"Bad:Key": "v"})
    with pytest.raises(errors.MaxPayloadError):
        wire.post("t.a", b"x" * (nc.max_payload + 1))
    # A value with line ends stays one header; nothing after it becomes a command.
    wire.post("t.a", b"ok", headers={"X-V": "a\r\nPUB t.evil 2\r\nhi"})
    msgs = await heard.wait_for(1)
    await receiver.flush()
    assert [(m.subject, m.data) for m in msgs] == [("t.a", b"ok")]
    assert (msgs[0].headers or {}).get("X-V") == "a  PUB t.evil 2  hi"
    await nc.close()
    with pytest.raises(errors.ConnectionClosedError):
        wire.post("t.a", b"")
    await receiver.close()


async def test_posts_during_a_reconnect_go_out_once_the_server_is_back(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats").start()
    port = server.port
    nc = await bus.connect(server.url, name="test-inline")
    wire = Inline.of(nc)
    heard = Heard()
    # Its own subscription: nats-py subscribes again on reconnect before it sends what is buffered.
    await wire.subscribe("t.later", heard)
    await nc.flush()
    lost, back = anyio.Event(), anyio.Event()
    nc._disconnected_cb = _setter(lost)
    nc._reconnected_cb = _setter(back)
    server.stop()
    with anyio.fail_after(10):
        await lost.wait()
    wire.post("t.later", b"kept", headers={"X-A": "1"})
    server = NatsServer(tmp_path / "nats2", port=port).start()
    try:
        with anyio.fail_after(10):
            await back.wait()
        msgs = await heard.wait_for(1)
        assert [(m.data, m.headers) for m in msgs] == [(b"kept", {"X-A": "1"})]
        await nc.close()
    finally:
        server.stop()


async def test_unsubscribed_inline_subscription_hears_nothing_more(nats_server: NatsServer) -> None:
    nc = await bus.connect(nats_server.url, name="test-inline")
    wire = Inline.of(nc)
    heard, after = Heard(), Heard()
    sub = await wire.subscribe("t.x", heard)
    await wire.subscribe("t.y", after)
    await nc.flush()
    wire.post("t.x", b"1")
    await heard.wait_for(1)
    await sub.unsubscribe()
    wire.post("t.x", b"2")
    wire.post("t.y", b"marker")  # same connection, so it arrives after anything sent to t.x
    await after.wait_for(1)
    assert [m.data for m in heard.msgs] == [b"1"]
    await nc.close()


def _setter(event: anyio.Event):  # type: ignore[no-untyped-def]
    async def cb() -> None:
        event.set()

    return cb


_HEADER_TEXT = st.text(alphabet=st.sampled_from(list("aZ9-_:;. \t\x0b\x0c\x1c\x1f\r\né")), max_size=12)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(_HEADER_TEXT, _HEADER_TEXT), max_size=6), st.sampled_from(["", "\r\n", " 503", "\r\n\r\n"]))
def test_plain_header_blocks_parse_as_nats_py_parses_them(lines: list[tuple[str, str]], tail: str) -> None:
    """Names and values with every kind of whitespace, colons, stray CR/LF, non-ASCII: where the fast
    parser takes a block it gives what nats-py gives; the blocks it declines go to nats-py."""
    block = ("NATS/1.0\r\n" + "".join(f"{name}:{value}\r\n" for name, value in lines) + tail).encode()
    expected = anyio.run(NATS()._process_headers, block)
    parsed = plain_headers(block)
    if parsed is None:
        assert not block.isascii()
    else:
        assert (parsed or None) == expected


async def test_a_status_block_is_left_to_nats_py() -> None:
    assert plain_headers(b"NATS/1.0 503\r\n\r\n") is None
    assert plain_headers(b"NATS/1.0\r\nKey: v\r\n\r\n") == {"Key": "v"}
