"""Bad credentials, bad bodies and misbehaving upstreams: the right status, the provider's error
format, an x-request-id, and nothing forwarded upstream that should not be."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import httpx2
import openai
import pytest

from harness import (
    ANTHROPIC_MODEL,
    CHAT_MODEL,
    FLAKY_MODEL,
    RENAMED_MODEL,
    UNREACHABLE_MODEL,
    Clients,
    Dataplane,
    DataplaneFleet,
    MockProvider,
    World,
    assert_anthropic_error,
    assert_no_secrets,
    assert_openai_error,
    assert_upstream_got_master,
    expected_answer,
    mock_headers,
    new_request_id,
    sse_data,
)

MAX_BODY_BYTES = 64 * 1024
CLIENT_BODY_TIMEOUT_S = 2
UPSTREAM_READ_TIMEOUT_S = 2
CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"


@pytest.fixture(scope="module")
def dataplane(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dataplane]:
    root = tmp_path_factory.mktemp("bad-input")
    config = world.config(root / "config")
    config["server"].update(
        max_body_bytes=MAX_BODY_BYTES,
        client_body_timeout=f"{CLIENT_BODY_TIMEOUT_S}s",
        upstream_read_timeout=f"{UPSTREAM_READ_TIMEOUT_S}s",
    )
    fleet = DataplaneFleet(root)
    try:
        yield fleet.start(config)
    finally:
        fleet.shutdown()


def chat_body(model: str | None = CHAT_MODEL, **extra: Any) -> bytes:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], **extra}
    if model is not None:
        body["model"] = model
    return json.dumps(body).encode()


def messages_body(model: str = ANTHROPIC_MODEL) -> bytes:
    return json.dumps({"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}).encode()


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def send(dataplane: Dataplane, route: str, headers: dict[str, str], body: bytes | Iterator[bytes]) -> httpx.Response:
    with httpx.Client(base_url=dataplane.url, timeout=30) as client:
        return client.post(route, content=body, headers={"content-type": "application/json", **headers})


def assert_error_format(route: str, response: httpx.Response, status: int) -> None:
    if route == MESSAGES:
        assert_anthropic_error(response, status)
    else:
        assert_openai_error(response, status)


# ---------------------------------------------------------------------------------------------
# The table: one request each, judged by status, error format, x-request-id and upstream traffic
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    status: int
    credential: Callable[[World], dict[str, str]]
    body: Callable[[], bytes] = chat_body
    route: str = CHAT
    forwarded: int | None = 0  # upstream requests the mock must see; None: not checked
    mock: dict[str, str] | None = None  # x-mock-* controls
    user: str | None = None  # user_id the usage event must carry


def _full(world: World) -> dict[str, str]:
    return bearer(world.full_key.secret)


CASES = [
    # credentials (OpenAI route)
    Case("no-credential", 401, lambda w: {}),
    Case("unknown-key", 401, lambda w: bearer("molt_sk_" + "A" * 43)),
    Case("not-bearer", 401, lambda w: {"authorization": f"Basic {w.full_key.secret}"}),
    Case("expired-jwt", 401, lambda w: bearer(w.jwt(ttl=-120))),
    Case("jwt-alg-none", 401, lambda w: bearer(w.jwt(alg="none"))),
    Case("jwt-wrong-alg", 401, lambda w: bearer(w.jwt(alg="HS384"))),
    Case("jwt-wrong-issuer", 401, lambda w: bearer(w.jwt(iss="someone-else"))),
    Case("jwt-bad-signature", 401, lambda w: bearer(w.jwt()[:-4] + "AAAA")),
    Case("valid-jwt", 200, lambda w: bearer(w.jwt(sub="jwt-user")), forwarded=1, user="jwt-user"),
    Case(
        "jwt-models-claim-denies", 403, lambda w: bearer(w.jwt(models=[CHAT_MODEL])), lambda: chat_body(RENAMED_MODEL)
    ),
    # routing and allowlists
    Case("unknown-model", 404, _full, lambda: chat_body("no-such-model")),
    Case("model-not-allowed", 403, lambda w: bearer(w.mini_key.secret), lambda: chat_body(RENAMED_MODEL)),
    # bodies
    Case("malformed-json", 400, _full, lambda: b'{"model": "gpt-4o-mini", "messages": ['),
    Case("missing-model", 400, _full, lambda: chat_body(None)),
    Case("model-not-a-string", 400, _full, lambda: json.dumps({"model": 42, "messages": []}).encode()),
    # the Anthropic route answers in Anthropic's format
    Case("anthropic-no-credential", 401, lambda w: {}, messages_body, MESSAGES),
    Case("anthropic-unknown-key", 401, lambda w: {"x-api-key": "molt_sk_" + "B" * 43}, messages_body, MESSAGES),
    Case(
        "anthropic-unknown-model",
        404,
        lambda w: {"x-api-key": w.full_key.secret},
        lambda: messages_body("nope"),
        MESSAGES,
    ),
    Case(
        "anthropic-not-allowed",
        403,
        lambda w: {"x-api-key": w.mini_key.secret},
        messages_body,
        MESSAGES,
    ),
    Case("anthropic-malformed-json", 400, lambda w: {"x-api-key": w.full_key.secret}, lambda: b"{", MESSAGES),
    Case("anthropic-bearer-works", 200, lambda w: bearer(w.full_key.secret), messages_body, MESSAGES, forwarded=1),
    # upstream trouble
    Case("upstream-refuses", 502, _full, lambda: chat_body(UNREACHABLE_MODEL)),
    Case(
        "upstream-timeout",
        504,
        _full,
        forwarded=None,
        mock=mock_headers(header_delay_ms=(UPSTREAM_READ_TIMEOUT_S + 3) * 1000),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(dataplane: Dataplane, mock: MockProvider, world: World, case: Case) -> None:
    rid = new_request_id()
    headers = {"x-request-id": rid, **mock_headers(chunks=2), **(case.mock or {}), **case.credential(world)}
    response = send(dataplane, case.route, headers, case.body())

    assert response.headers.get("x-request-id") == rid
    assert_no_secrets(response.content, f"{case.id} response body")
    assert_no_secrets(str(response.headers), f"{case.id} response headers")
    if case.status == 200:
        assert response.status_code == 200, response.text
    else:
        assert_error_format(case.route, response, case.status)
    if case.user:
        assert dataplane.usage_event(rid)["user_id"] == case.user
    records = mock.requests()
    if case.forwarded is not None:
        assert len(records) == case.forwarded, f"upstream saw {len(records)} request(s): {records}"
    for record in records:
        presented = record.get("x_api_key") or (record.get("authorization") or "").removeprefix("Bearer ")
        assert presented in world.master_keys, "a request reached upstream without a master key"
        assert "molt_sk_" not in json.dumps(record) and "eyJ" not in json.dumps(record), "client credential forwarded"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_body_too_big(dataplane: Dataplane, mock: MockProvider, world: World, framing: str) -> None:
    body = chat_body(padding="x" * (2 * MAX_BODY_BYTES))
    content = body if framing == "content-length" else iter([body[i : i + 8192] for i in range(0, len(body), 8192)])
    try:
        response = send(dataplane, CHAT, bearer(world.full_key.secret), content)
    except httpx.WriteError:
        pytest.fail("the data plane closed the connection instead of answering 413")
    assert_openai_error(response, 413)
    assert response.headers.get("x-request-id")
    assert mock.requests() == []


def test_client_that_stalls_mid_body_gets_408(dataplane: Dataplane, mock: MockProvider, world: World) -> None:
    host, port = dataplane.url.removeprefix("http://").rsplit(":", 1)
    head = (
        f"POST {CHAT} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {world.full_key.secret}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    )
    slack = 5
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=CLIENT_BODY_TIMEOUT_S + slack) as sock:
        sock.sendall(head.encode() + b'{"model": ')  # 10 of the promised 100 bytes, then silence
        answer = b""
        try:
            while b"\r\n\r\n" not in answer:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        except TimeoutError:
            pytest.fail(f"no answer within client_body_timeout + {slack}s")
    elapsed = time.monotonic() - started
    status_line = answer.split(b"\r\n", 1)[0].decode()
    assert status_line.split(" ")[1:2] == ["408"], f"got {status_line!r}"
    assert elapsed < CLIENT_BODY_TIMEOUT_S + slack
    assert b"x-request-id" in answer.lower()
    assert mock.requests() == []


def test_fallback_after_upstream_500(dataplane: Dataplane, mock: MockProvider, world: World) -> None:
    rid = new_request_id()
    response = send(
        dataplane,
        CHAT,
        {"x-request-id": rid, **bearer(world.full_key.secret), **mock_headers(chunks=3)},
        chat_body(FLAKY_MODEL),
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == expected_answer(3)
    records = mock.requests()
    assert [r["model"] for r in records] == ["mock-error-500", CHAT_MODEL]
    for record in records:
        assert_upstream_got_master(record, world.openai_masters, world.full_key.secret)
    event = dataplane.usage_event(rid)
    assert event["status"] == 200
    assert (event["input_tokens"], event["output_tokens"]) == (
        records[1]["usage"]["input_tokens"],
        records[1]["usage"]["output_tokens"],
    )


# ---------------------------------------------------------------------------------------------
# Upstream dies mid-stream: the client must notice, never see a clean [DONE]
# ---------------------------------------------------------------------------------------------

ABORT = mock_headers(chunks=6, abort_after=2)


def test_upstream_abort_mid_stream_raises_in_the_sdk(dataplane: Dataplane, mock: MockProvider, world: World) -> None:
    clients = Clients(dataplane, tls=False)
    try:
        stream = clients.openai(world.full_key).chat.completions.create(
            model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}], stream=True, extra_headers=ABORT
        )
        received: list[str] = []
        # The SDK surfaces a truncated body as its own APIError or as the transport's error.
        with pytest.raises((openai.APIError, httpx2.HTTPError)):
            for chunk in stream:
                received.extend(c.delta.content or "" for c in chunk.choices)
        assert "".join(received) == expected_answer(2)
        assert b"[DONE]" not in bytes(clients.wire.last.body)
    finally:
        clients.close()
    assert len(mock.requests()) == 1


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "tls-h2"])
def test_upstream_abort_mid_stream_truncates_the_raw_body(
    dataplane: Dataplane, mock: MockProvider, world: World, http2: bool
) -> None:
    base_url = dataplane.tls_url if http2 else dataplane.url
    verify = dataplane.tls_context() if http2 else True
    received = bytearray()
    with httpx.Client(base_url=base_url, http2=http2, verify=verify, timeout=30) as client:
        with client.stream(
            "POST",
            CHAT,
            content=chat_body(stream=True),
            headers={**bearer(world.full_key.secret), "content-type": "application/json", **ABORT},
        ) as response:
            assert response.status_code == 200
            assert response.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
            with pytest.raises(httpx.HTTPError):  # incomplete chunked body / reset stream
                for chunk in response.iter_raw():
                    received.extend(chunk)
    payloads = sse_data(bytes(received))
    assert "[DONE]" not in payloads
    assert len([p for p in payloads if '"content"' in p]) == 2
