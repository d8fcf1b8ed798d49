"""A 2 MiB request whose `model` comes last still routes, streams, and reaches upstream byte-exact."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from harness import (
    CHAT_MODEL,
    Dataplane,
    MockProvider,
    World,
    assert_upstream_got_master,
    assert_usage_recorded,
    expected_answer,
    mock_headers,
    new_request_id,
    sha256_hex,
    sse_json,
)

BODY_SIZE = 2 * 1024 * 1024
CHUNKS = 4


def large_body() -> bytes:
    """~2 MiB of JSON with `model` as the very last field.

    It asks for include_usage itself, so the proxy has nothing to splice in and the upstream
    must receive exactly these bytes.
    """
    filler = ("All work and no play makes a long prompt. " * (BODY_SIZE // 40))[:BODY_SIZE]
    body = (
        '{"messages":[{"role":"user","content":' + json.dumps(filler) + "}],"
        '"stream":true,"stream_options":{"include_usage":true},'
        f'"model":"{CHAT_MODEL}"}}'
    )
    return body.encode()


def in_pieces(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_large_body_with_model_last(
    module_dataplane: Dataplane, mock: MockProvider, world: World, framing: str
) -> None:
    body = large_body()
    rid = new_request_id()
    headers = {
        "authorization": f"Bearer {world.full_key.secret}",
        "content-type": "application/json",
        "x-request-id": rid,
        **mock_headers(chunks=CHUNKS),
    }
    content = body if framing == "content-length" else in_pieces(body)
    with httpx.Client(base_url=module_dataplane.url, timeout=30) as client:
        with client.stream("POST", "/v1/chat/completions", content=content, headers=headers) as response:
            assert response.status_code == 200, response.read()
            raw = response.read()
    assert response.headers["x-request-id"] == rid

    events = sse_json(raw)
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text == expected_answer(CHUNKS)
    assert raw.rstrip().endswith(b"data: [DONE]")

    record = mock.only_request()
    assert record["model"] == CHAT_MODEL
    assert (record["body_len"], record["body_sha256"]) == (len(body), sha256_hex(body))
    assert_upstream_got_master(record, world.openai_masters, world.full_key.secret)

    event = module_dataplane.usage_event(rid)
    assert_usage_recorded(
        event,
        record,
        key=world.full_key,
        model=CHAT_MODEL,
        provider="mock-openai",
        route="/v1/chat/completions",
        stream=True,
    )
    assert events[-1]["usage"]["prompt_tokens"] == record["usage"]["input_tokens"]
