"""Request smuggling and framing, tried byte by byte on the data plane's plain listener: HTTP/1.1 on raw sockets,
and HTTP/2 with prior knowledge (h2c) through the `h2` package with its own checks off, so it sends what it is told.

Each case either gets a clear 4xx (over HTTP/1.1 the connection is then closed, so no byte after a broken frame is
ever read as a request; over HTTP/2 the stream or connection is reset with PROTOCOL_ERROR or answered 400), or is
framed one safe way and answered once. The mock provider's record shows what reached the upstream: nothing for a
refused request; for an answered one exactly one request, carrying the client's validated body. Several cases hide
a second, complete request (to /v1/embeddings) where a parser that framed the first one differently would read it;
it must never be answered nor reach the upstream.

The data plane never forwards the client's framing: it reads and validates the whole body, then sends the upstream a
request head it builds itself with its own Content-Length (proxy/headers.rs). So the only parser whose view of the
framing matters is the data plane's own (Pingora's, with httparse), and these cases pin down what it accepts."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest

from harness import CHAT_MODEL, EMBEDDING_MODEL, Dataplane, MockProvider, World, sha256_hex

BODY = json.dumps({"model": CHAT_MODEL, "messages": [{"role": "user", "content": "framing"}]}).encode()
SMUGGLED_BODY = json.dumps({"model": EMBEDDING_MODEL, "input": "smuggled"}).encode()
CHAT = b"POST /v1/chat/completions HTTP/1.1"

# How long a connection may stay quiet after its answer before we stop waiting for a second (smuggled) one.
QUIET_S = 0.4
# How long a refused request's connection may take to be closed.
CLOSE_WAIT_S = 3.0


def cl(body: bytes = BODY) -> bytes:
    return b"Content-Length: %d" % len(body)


def chunked(body: bytes = BODY, size: bytes | None = None) -> bytes:
    """`body` as one chunk and the last chunk; `size` replaces the chunk-size line's text."""
    return (size if size is not None else b"%x" % len(body)) + b"\r\n" + body + b"\r\n0\r\n\r\n"


def smuggled(key: str) -> bytes:
    """A complete, valid request that must never be answered or reach the upstream when it hides in a body."""
    return b"\r\n".join(
        [
            b"POST /v1/embeddings HTTP/1.1",
            b"Host: x",
            b"Authorization: Bearer " + key.encode(),
            b"Content-Type: application/json",
            cl(SMUGGLED_BODY),
            b"",
            SMUGGLED_BODY,
        ]
    )


def request(key: str, *headers: bytes, body: bytes = BODY, line: bytes = CHAT, eol: bytes = b"\r\n") -> bytes:
    """A chat completion request with the client's key, `headers` and `body` as given (no framing added)."""
    head = [line, b"Host: x", b"Authorization: Bearer " + key.encode(), b"Content-Type: application/json", *headers]
    return eol.join(head) + eol + eol + body


# --------------------------------------------------------------------------------------------
# HTTP/1.1
# --------------------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Exchange:
    responses: list[Response] = field(default_factory=list)
    closed: bool = False

    @property
    def final(self) -> list[Response]:
        return [r for r in self.responses if r.status >= 200]

    @property
    def informational(self) -> list[int]:
        return [r.status for r in self.responses if r.status < 200]


def _parse(buf: bytes, closed: bool) -> tuple[Response | None, bytes]:
    """One whole response off the front of `buf`, or None if it is not all there yet."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None, buf
    lines = buf[:end].decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    rest = buf[end + 4 :]
    if status < 200:
        return Response(status, headers, b""), rest
    if "content-length" in headers:
        n = int(headers["content-length"])
        return (Response(status, headers, rest[:n]), rest[n:]) if len(rest) >= n else (None, buf)
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body, pos = b"", 0
        while True:
            eol = rest.find(b"\r\n", pos)
            if eol < 0:
                return None, buf
            size = int(rest[pos:eol].split(b";")[0], 16)
            if len(rest) < eol + 2 + size + 2:
                return None, buf
            body += rest[eol + 2 : eol + 2 + size]
            pos = eol + 2 + size + 2
            if size == 0:
                return Response(status, headers, body), rest[pos:]
    # Delimited by the close.
    return (Response(status, headers, rest), b"") if closed else (None, buf)


def exchange(dataplane: Dataplane, wire: bytes) -> Exchange:
    """Send `wire` at once and read every response until the server closes the connection or stays quiet for
    QUIET_S after a final answer (CLOSE_WAIT_S before one)."""
    host, port = dataplane.listeners["http"].rsplit(":", 1)
    result = Exchange()
    buf = b""
    with socket.create_connection((host, int(port)), timeout=CLOSE_WAIT_S) as sock:
        sock.sendall(wire)
        while True:
            sock.settimeout(QUIET_S if result.final else CLOSE_WAIT_S)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                data = b""
            if not data:
                result.closed = True
            buf += data
            while buf:
                response, buf = _parse(buf, result.closed)
                if response is None:
                    break
                result.responses.append(response)
            if result.closed:
                break
    assert not buf, f"bytes after the last whole response: {buf[:200]!r}"
    return result


@dataclass(frozen=True)
class H1Case:
    name: str
    wire: Callable[[str], bytes]
    """The client's bytes, given its key."""
    status: int
    """The one final answer."""
    upstream: bool
    """The validated body reaches the upstream, once."""
    informational: tuple[int, ...] = ()
    """1xx answers before the final one."""


H1_CASES = [
    H1Case("baseline", lambda k: request(k, cl()), 200, True),
    # Transfer-Encoding wins over Content-Length (RFC 9112 6.3); Pingora drops the length and closes afterwards.
    H1Case(
        "CL+TE", lambda k: request(k, b"Content-Length: 5", b"Transfer-Encoding: chunked", body=chunked()), 200, True
    ),
    H1Case(
        "TE+CL, a request hidden past the chunked end",
        lambda k: request(k, b"Transfer-Encoding: chunked", b"Content-Length: 400", body=chunked() + smuggled(k)),
        200,
        True,
    ),
    H1Case("duplicate Content-Length, equal", lambda k: request(k, cl(), cl()), 200, True),
    H1Case("duplicate Content-Length, different", lambda k: request(k, cl(), b"Content-Length: 5"), 400, False),
    H1Case("Content-Length list", lambda k: request(k, b"Content-Length: %d, 5" % len(BODY)), 400, False),
    H1Case("Content-Length negative", lambda k: request(k, b"Content-Length: -1"), 400, False),
    H1Case("Content-Length with a sign", lambda k: request(k, b"Content-Length: +%d" % len(BODY)), 400, False),
    H1Case("Content-Length in hex", lambda k: request(k, b"Content-Length: 0x43"), 400, False),
    H1Case("Content-Length, space before the colon", lambda k: request(k, b"Content-Length : 5"), 400, False),
    H1Case(
        "TE: chunked, identity (chunked not last)",
        lambda k: request(k, b"Transfer-Encoding: chunked, identity", body=chunked()),
        400,
        False,
    ),
    H1Case("TE: xchunked", lambda k: request(k, b"Transfer-Encoding: xchunked", body=chunked()), 400, False),
    H1Case("TE: leading space", lambda k: request(k, b"Transfer-Encoding:  chunked", body=chunked()), 200, True),
    H1Case("TE: leading tab", lambda k: request(k, b"Transfer-Encoding:\tchunked", body=chunked()), 200, True),
    H1Case("TE: uppercase", lambda k: request(k, b"Transfer-Encoding: CHUNKED", body=chunked()), 200, True),
    H1Case(
        "TE, space before the colon",
        lambda k: request(k, b"Transfer-Encoding : chunked", body=chunked()),
        400,
        False,
    ),
    H1Case(
        "TE twice, identity last",
        lambda k: request(k, b"Transfer-Encoding: chunked", b"Transfer-Encoding: identity", body=chunked()),
        400,
        False,
    ),
    H1Case("obs-fold continuation line", lambda k: request(k, cl(), b"X-Note: a", b" folded"), 400, False),
    H1Case(
        "obs-fold hiding chunked",
        lambda k: request(k, b"Transfer-Encoding: identity", b" chunked", body=chunked()),
        400,
        False,
    ),
    # RFC 9112 2.2: a recipient MAY take a bare LF as a line end; httparse does, and the upstream never sees it.
    H1Case("bare LF line endings", lambda k: request(k, cl(), eol=b"\n"), 200, True),
    H1Case("NUL in a header value", lambda k: request(k, cl(), b"X-Note: a\x00b"), 400, False),
    H1Case("CR in a header value", lambda k: request(k, cl(), b"X-Note: a\rb"), 400, False),
    H1Case(
        "chunk size over 64 bits",
        lambda k: request(k, b"Transfer-Encoding: chunked", body=chunked(size=b"1" + b"0" * 16) + smuggled(k)),
        400,
        False,
    ),
    H1Case(
        "chunk size 2^64-1",
        lambda k: request(k, b"Transfer-Encoding: chunked", body=chunked(size=b"f" * 16)),
        400,
        False,
    ),
    H1Case(
        "chunk size negative",
        lambda k: request(k, b"Transfer-Encoding: chunked", body=chunked(size=b"-1")),
        400,
        False,
    ),
    H1Case(
        "chunk size 0x-prefixed, a request hidden in the chunk",
        lambda k: request(k, b"Transfer-Encoding: chunked", body=b"0x10\r\n" + smuggled(k)),
        400,
        False,
    ),
    H1Case(
        "chunk size with trailing garbage",
        lambda k: request(k, b"Transfer-Encoding: chunked", body=chunked(size=b"%xg" % len(BODY)) + smuggled(k)),
        400,
        False,
    ),
    H1Case(
        "chunk extensions",
        lambda k: request(
            k, b"Transfer-Encoding: chunked", body=b"%x;name=value;flag\r\n" % len(BODY) + BODY + b"\r\n0;end=1\r\n\r\n"
        ),
        200,
        True,
    ),
    H1Case(
        "chunk longer than its size, a request hidden after",
        lambda k: request(k, b"Transfer-Encoding: chunked", body=chunked(size=b"%x" % (len(BODY) - 10)) + smuggled(k)),
        400,
        False,
    ),
    H1Case(
        "chunk lines with bare LF",
        lambda k: request(k, b"Transfer-Encoding: chunked", body=b"%x\n" % len(BODY) + BODY + b"\n0\n\n"),
        400,
        False,
    ),
    H1Case(
        "body with neither length nor chunking",
        lambda k: request(k, body=b"") + smuggled(k),
        400,
        False,
    ),
    # Pingora does not pipeline by default: the first request is answered, the connection closed, the second dropped
    # unread (RFC 9112 9.3.2 lets the client retry it on a new connection).
    H1Case("a second request pipelined", lambda k: request(k, cl()) + smuggled(k), 200, True),
    H1Case("Expect: 100-continue", lambda k: request(k, cl(), b"Expect: 100-continue"), 200, True, (100,)),
    H1Case(
        "Expect: 100-continue on HTTP/1.0 (ignored)",
        lambda k: request(k, cl(), b"Expect: 100-continue", line=b"POST /v1/chat/completions HTTP/1.0"),
        200,
        True,
    ),
    H1Case(
        "Expect: 100-continue with a bad key, a request as its body",
        lambda k: request("molt_sk_wrong", cl(smuggled(k)), b"Expect: 100-continue", body=smuggled(k)),
        401,
        False,
    ),
    H1Case("Expect: an unknown expectation (ignored)", lambda k: request(k, cl(), b"Expect: 999-nope"), 200, True),
    H1Case(
        "absolute-form URI, same authority as Host",
        lambda k: request(k, cl(), line=b"POST http://x/v1/chat/completions HTTP/1.1"),
        200,
        True,
    ),
    H1Case(
        "absolute-form URI, another authority than Host",
        lambda k: request(k, cl(), line=b"POST http://evil.example/v1/chat/completions HTTP/1.1"),
        400,
        False,
    ),
    H1Case(
        "HTTP/1.0 with Transfer-Encoding",
        lambda k: request(k, b"Transfer-Encoding: chunked", body=chunked(), line=b"POST /v1/chat/completions HTTP/1.0"),
        400,
        False,
    ),
    H1Case(
        "HTTP/1.0 with Content-Length",
        lambda k: request(k, cl(), line=b"POST /v1/chat/completions HTTP/1.0"),
        200,
        True,
    ),
    H1Case("two Host headers", lambda k: request(k, b"Host: y", cl()), 400, False),
    # Pingora takes h2c only with prior knowledge; an Upgrade: h2c request is answered over HTTP/1.1.
    H1Case(
        "Upgrade: h2c",
        lambda k: request(
            k,
            cl(),
            b"Connection: Upgrade, HTTP2-Settings",
            b"Upgrade: h2c",
            b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
        ),
        200,
        True,
    ),
]


@pytest.mark.parametrize("case", H1_CASES, ids=[c.name for c in H1_CASES])
def test_http1_framing(module_dataplane: Dataplane, mock: MockProvider, world: World, case: H1Case) -> None:
    seen = exchange(module_dataplane, case.wire(world.full_key.secret))

    statuses = [r.status for r in seen.responses]
    assert [r.status for r in seen.final] == [case.status], f"answers {statuses}, closed={seen.closed}"
    assert tuple(seen.informational) == case.informational, f"answers {statuses}"
    answer = seen.final[0]
    if case.status >= 400:
        # A refusal closes the connection, so whatever follows the broken part is never read as a request.
        assert seen.closed, f"{case.status} left the connection open"
    if answer.body and answer.headers.get("content-type") == "application/json" and case.status >= 400:
        error = json.loads(answer.body)["error"]
        assert error["message"] and error["code"], error

    records = mock.requests()
    if case.upstream:
        assert len(records) == 1, f"expected the one validated request upstream, mock saw {_summary(records)}"
        record = records[0]
        assert (record["method"], record["path"]) == ("POST", "/v1/chat/completions")
        assert record["body_sha256"] == sha256_hex(BODY), "the upstream got another body than the client's"
        forwarded = {name.lower() for name, _ in _header_pairs(record)}
        hop_by_hop = {"transfer-encoding", "connection", "upgrade", "expect", "te", "keep-alive"}
        assert not forwarded & hop_by_hop, f"hop-by-hop headers reached the upstream: {forwarded & hop_by_hop}"
        assert _header(record, "content-length") == str(len(BODY))
    else:
        assert records == [], f"a refused request reached the upstream: {_summary(records)}"


def _header_pairs(record: dict[str, Any]) -> list[tuple[str, str]]:
    headers = record["headers"]
    return list(headers.items()) if isinstance(headers, dict) else [tuple(pair) for pair in headers]


def _header(record: dict[str, Any], name: str) -> str | None:
    return next((value for key, value in _header_pairs(record) if key.lower() == name), None)


def _summary(records: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    return [(r["method"], r["path"], r["body_len"]) for r in records]


# --------------------------------------------------------------------------------------------
# HTTP/2 (prior knowledge)
# --------------------------------------------------------------------------------------------

Headers = list[tuple[str, str]]


def h2_request(key: str) -> Headers:
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "x"),
        (":path", "/v1/chat/completions"),
        ("authorization", f"Bearer {key}"),
        ("content-type", "application/json"),
    ]


def without(headers: Headers, name: str) -> Headers:
    return [h for h in headers if h[0] != name]


def moved_last(headers: Headers, name: str) -> Headers:
    return without(headers, name) + [h for h in headers if h[0] == name]


@dataclass
class H2Outcome:
    status: int | None = None
    body: bytes = b""
    ended: bool = False
    reset: h2.errors.ErrorCodes | None = None
    """The stream's RST_STREAM code, or the connection's GOAWAY code."""


def h2_exchange(dataplane: Dataplane, headers: Headers, body: bytes) -> H2Outcome:
    """One request over a fresh h2c connection, sent as given (the `h2` package's own checks are off)."""
    host, port = dataplane.listeners["http"].rsplit(":", 1)
    config = h2.config.H2Configuration(
        client_side=True,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        split_outbound_cookies=False,
        validate_inbound_headers=False,
    )
    conn = h2.connection.H2Connection(config)
    outcome = H2Outcome()
    with socket.create_connection((host, int(port)), timeout=CLOSE_WAIT_S) as sock:
        conn.initiate_connection()
        conn.send_headers(1, headers)
        conn.send_data(1, body, end_stream=True)
        sock.sendall(conn.data_to_send())
        deadline = time.monotonic() + CLOSE_WAIT_S
        while not (outcome.ended or outcome.reset is not None) and time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    outcome.status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    outcome.body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    outcome.ended = True
                elif isinstance(event, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                    outcome.reset = h2.errors.ErrorCodes(event.error_code)
            try:
                sock.sendall(conn.data_to_send())
            except (BrokenPipeError, ConnectionResetError):
                break  # the server closed after its GOAWAY; what it said is already read
    return outcome


@dataclass(frozen=True)
class H2Case:
    name: str
    headers: Callable[[str], Headers]
    status: int | None
    """The answer; None: the stream or connection is reset with PROTOCOL_ERROR."""
    body: bytes = BODY

    @property
    def upstream(self) -> bool:
        return self.status == 200


H2_CASES = [
    H2Case("baseline", h2_request, 200),
    H2Case(":path missing", lambda k: without(h2_request(k), ":path"), None),
    H2Case(":path twice", lambda k: [*h2_request(k), (":path", "/v1/models")], None),
    H2Case(":path empty", lambda k: [*without(h2_request(k), ":path"), (":path", "")], None),
    H2Case(":path not absolute", lambda k: [*without(h2_request(k), ":path"), (":path", "v1/chat/completions")], None),
    H2Case(":method missing", lambda k: without(h2_request(k), ":method"), None),
    H2Case(":scheme missing", lambda k: without(h2_request(k), ":scheme"), None),
    H2Case("a pseudo-header after a regular one", lambda k: moved_last(h2_request(k), ":path"), None),
    H2Case("an unknown pseudo-header", lambda k: [*h2_request(k), (":smuggle", "1")], None),
    H2Case(":authority and host differ", lambda k: [*h2_request(k), ("host", "evil.example")], 400),
    # RFC 9113 8.3.1: Host may stand in for :authority.
    H2Case("host instead of :authority", lambda k: [*without(h2_request(k), ":authority"), ("host", "x")], 200),
    H2Case("transfer-encoding", lambda k: [*h2_request(k), ("transfer-encoding", "chunked")], None),
    H2Case("connection", lambda k: [*h2_request(k), ("connection", "keep-alive")], None),
    H2Case("keep-alive", lambda k: [*h2_request(k), ("keep-alive", "timeout=5")], None),
    H2Case("upgrade", lambda k: [*h2_request(k), ("upgrade", "h2c")], None),
    H2Case("te: trailers (the one TE allowed)", lambda k: [*h2_request(k), ("te", "trailers")], 200),
    H2Case("te: gzip", lambda k: [*h2_request(k), ("te", "gzip")], None),
    H2Case("an uppercase header name", lambda k: [*h2_request(k), ("X-Upper", "1")], None),
    H2Case("content-length below the DATA", lambda k: [*h2_request(k), ("content-length", "5")], None),
    H2Case("content-length above the DATA", lambda k: [*h2_request(k), ("content-length", str(len(BODY) + 100))], None),
    H2Case(
        "content-length twice, different",
        lambda k: [*h2_request(k), ("content-length", str(len(BODY))), ("content-length", "5")],
        None,
    ),
    H2Case("CRLF in a header value", lambda k: [*h2_request(k), ("x-note", "a\r\nx-smuggled: 1")], None),
    H2Case("NUL in a header value", lambda k: [*h2_request(k), ("x-note", "a\x00b")], None),
    H2Case("a colon in a header name", lambda k: [*h2_request(k), ("x:note", "1")], None),
]


@pytest.mark.parametrize("case", H2_CASES, ids=[c.name for c in H2_CASES])
def test_http2_framing(module_dataplane: Dataplane, mock: MockProvider, world: World, case: H2Case) -> None:
    outcome = h2_exchange(module_dataplane, case.headers(world.full_key.secret), case.body)

    if case.status is None:
        assert outcome.status is None, f"answered {outcome.status}: {outcome.body[:200]!r}"
        assert outcome.reset == h2.errors.ErrorCodes.PROTOCOL_ERROR, f"not reset as malformed: {outcome}"
    else:
        assert outcome.status == case.status and outcome.ended, outcome
    records = mock.requests()
    if case.upstream:
        assert len(records) == 1, f"expected the one validated request upstream, mock saw {_summary(records)}"
        assert records[0]["path"] == "/v1/chat/completions"
        assert records[0]["body_sha256"] == sha256_hex(BODY)
    else:
        assert records == [], f"a refused request reached the upstream: {_summary(records)}"


def test_no_error_was_logged(module_dataplane: Dataplane) -> None:
    """Hostile framing is the client's doing: refused and counted, never an ERROR line (runs after the tables)."""
    errors = [line for line in module_dataplane.logs().splitlines() if '"level":"ERROR"' in line]
    assert not errors, f"ERROR lines: {errors[:3]}"
