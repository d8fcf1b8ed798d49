"""OpenAI's Realtime API through the data plane (`GET /v1/realtime?model=`), with the real `websockets` client
and the `openai` SDK's Realtime client, against the mock provider's Realtime endpoint.

Covered: a session with two responses relays every event in order; the usage event (route `realtime`) equals
the sum of the mock's `response.done` usage and the token metric grows by the same; the mock saw a master key
and never the molt key; OpenAI's browser scheme (`openai-insecure-api-key.<key>` in Sec-WebSocket-Protocol)
authenticates and `realtime` is echoed; refusals before the upgrade (401, 404, 403, 400, 502).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import openai
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from harness import (
    ANTHROPIC_MODEL,
    CHAT_MODEL,
    EMBEDDING_MODEL,
    MOCK_SENTENCE,
    UNREACHABLE_MODEL,
    Dataplane,
    MockProvider,
    World,
    assert_upstream_got_master,
)

# The mock's default: one delta per word, as many as its `chunks` (8), cycling through the sentence.
DELTAS = 8


def realtime_url(dp: Dataplane, model: str = CHAT_MODEL) -> str:
    return f"{dp.url.replace('http://', 'ws://')}/v1/realtime?model={model}"


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def recv_json(ws: Any) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), 10))


async def one_response(ws: Any, text: str) -> list[dict[str, Any]]:
    """Add a user message, ask for a response, collect events up to `response.done`."""
    await ws.send(
        json.dumps(
            {
                "type": "conversation.item.create",
                "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]},
            }
        )
    )
    assert (await recv_json(ws))["type"] == "conversation.item.created"
    await ws.send(json.dumps({"type": "response.create", "response": {"modalities": ["text"]}}))
    events = []
    while True:
        event = await recv_json(ws)
        events.append(event)
        if event["type"] == "response.done":
            return events


def assert_response(events: list[dict[str, Any]], delta_type: str) -> dict[str, int]:
    kinds = [e["type"] for e in events]
    assert kinds[0] == "response.created", kinds
    assert kinds[1 : 1 + DELTAS] == [delta_type] * DELTAS, kinds
    assert kinds[-1] == "response.done", kinds
    text = "".join(e["delta"] for e in events if e["type"] == delta_type)
    assert text.split() == (MOCK_SENTENCE.split() * DELTAS)[:DELTAS]
    usage = events[-1]["response"]["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    return usage


def session_record(mock: MockProvider) -> dict[str, Any]:
    [record] = [r for r in mock.requests() if r["path"].startswith("/v1/realtime")]
    return record


def test_session_with_two_responses(world: World, mock: MockProvider, module_dataplane: Dataplane) -> None:
    dp = module_dataplane
    key = world.full_key
    tokens_before = dp.metric_value("molt_tokens_total")

    async def go() -> tuple[str, list[dict[str, int]]]:
        headers = {"Authorization": f"Bearer {key.secret}", "OpenAI-Beta": "realtime=v1"}
        async with websockets.connect(realtime_url(dp, "mini"), additional_headers=headers) as ws:
            request_id = ws.response.headers["x-request-id"]
            created = await recv_json(ws)
            assert created["type"] == "session.created"
            assert created["session"]["model"] == CHAT_MODEL  # the alias was resolved upstream
            first = assert_response(await one_response(ws, "hello there"), "response.text.delta")
            second = assert_response(await one_response(ws, "and a much longer second question " * 5), "response.text.delta")
            return request_id, [first, second]

    request_id, usages = run(go())
    record = session_record(mock)
    assert_upstream_got_master(record, world.masters_for("mock-openai"), key.secret)
    assert record["path"] == f"/v1/realtime?model={CHAT_MODEL}"
    headers = dict(record["headers"])
    assert headers.get("openai-beta") == "realtime=v1"
    assert "sec-websocket-protocol" not in headers

    summed = {k: sum(u[k] for u in usages) for k in ("input_tokens", "output_tokens")}
    assert usages[0]["input_tokens"] != usages[1]["input_tokens"]
    assert record["usage"] == summed

    event = dp.usage_event(request_id)
    assert {k: event[k] for k in ("route", "model", "provider", "key_id", "user_id", "status", "stream")} == {
        "route": "realtime",
        "model": CHAT_MODEL,
        "provider": "mock-openai",
        "key_id": key.id,
        "user_id": key.user,
        "status": 101,
        "stream": True,
    }
    assert (event["input_tokens"], event["output_tokens"]) == (summed["input_tokens"], summed["output_tokens"])
    assert event["estimated"] is False and event["outcome"] == "ok"
    expected = tokens_before + summed["input_tokens"] + summed["output_tokens"]
    assert dp.metric_value("molt_tokens_total") == expected


def test_browser_subprotocol_auth(world: World, mock: MockProvider, module_dataplane: Dataplane) -> None:
    """OpenAI's browser scheme, with the molt key where an OpenAI key would go; GA event names."""
    key = world.full_key
    offered = ["realtime", f"openai-insecure-api-key.{key.secret}"]

    async def go() -> tuple[str | None, dict[str, int]]:
        async with websockets.connect(realtime_url(module_dataplane), subprotocols=offered) as ws:  # type: ignore[arg-type]
            assert (await recv_json(ws))["type"] == "session.created"
            usage = assert_response(await one_response(ws, "hi"), "response.output_text.delta")
            return ws.subprotocol, usage

    chosen, usage = run(go())
    assert chosen == "realtime"
    record = session_record(mock)
    assert_upstream_got_master(record, world.masters_for("mock-openai"), key.secret)
    assert "openai-beta" not in dict(record["headers"])
    assert record["usage"] == {k: usage[k] for k in ("input_tokens", "output_tokens")}


def test_openai_sdk_realtime_client(world: World, mock: MockProvider, module_dataplane: Dataplane) -> None:
    """The `openai` SDK's own Realtime client, pointed at the data plane."""
    key = world.full_key
    client = openai.AsyncOpenAI(
        api_key=key.secret,
        base_url=f"{module_dataplane.url}/v1",
        websocket_base_url=f"{module_dataplane.url.replace('http://', 'ws://')}/v1",
    )

    async def go() -> list[str]:
        async with client.realtime.connect(model=CHAT_MODEL) as conn:
            kinds = []
            await conn.send({"type": "response.create"})
            async for event in conn:
                kinds.append(event.type)
                if event.type == "response.done":
                    assert event.response.usage is not None
                    assert event.response.usage.output_tokens == DELTAS
                    return kinds
            return kinds

    kinds = run(go())
    assert kinds[0] == "session.created" and kinds[-1] == "response.done", kinds
    record = session_record(mock)
    assert_upstream_got_master(record, world.masters_for("mock-openai"), key.secret)


def refused(url: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    async def go() -> None:
        async with websockets.connect(url, open_timeout=10, **kwargs):
            pass

    with pytest.raises(InvalidStatus) as info:
        run(go())
    response = info.value.response
    return response.status_code, json.loads(response.body or b"{}")


@pytest.mark.parametrize(
    ("model", "key_name", "status", "code"),
    [
        ("no-such-model", "full_key", 404, "model_not_found"),
        (EMBEDDING_MODEL, "mini_key", 403, "model_not_allowed"),
        (ANTHROPIC_MODEL, "full_key", 400, "model_not_realtime"),
        (UNREACHABLE_MODEL, "full_key", 502, "upstream_unavailable"),
    ],
)
def test_refused_before_upgrade(
    world: World, mock: MockProvider, module_dataplane: Dataplane, model: str, key_name: str, status: int, code: str
) -> None:
    key = getattr(world, key_name)
    got, body = refused(realtime_url(module_dataplane, model), additional_headers={"Authorization": f"Bearer {key.secret}"})
    assert (got, body["error"]["code"]) == (status, code), body
    assert key.secret not in json.dumps(body)
    assert mock.requests() == [], "a refused session reached the provider"


def test_no_auth_is_401(mock: MockProvider, module_dataplane: Dataplane) -> None:
    got, body = refused(realtime_url(module_dataplane))
    assert (got, body["error"]["code"]) == (401, "missing_api_key")
    got, body = refused(realtime_url(module_dataplane), additional_headers={"Authorization": "Bearer molt_sk_wrong"})
    assert (got, body["error"]["code"]) == (401, "invalid_api_key")
    got, body = refused(f"{realtime_url(module_dataplane).split('?')[0]}", additional_headers={"Authorization": "Bearer x"})
    assert got == 401  # auth comes before the query is looked at
    assert mock.requests() == []
