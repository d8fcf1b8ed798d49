"""Token classes through the official SDKs: the usage event carries exactly the cache reads and writes and
the reasoning tokens the provider reported, as parts of the totals. And a monthly dollar budget held by two
data planes sharing Redis, counted at each answer's cost by class.

The mock reports classes in each format's real shape when a request asks for them the way clients do: an
Anthropic `cache_control` block (with `"ttl": "1h"`: a one-hour cache write), OpenAI's `prompt_cache_key`
(cached prompt tokens) and `reasoning_effort` (hidden reasoning tokens, part of the completion total).
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness import (
    ANTHROPIC_MODEL,
    CHAT_MODEL,
    Clients,
    Dataplane,
    MockProvider,
    World,
    assert_usage_recorded,
    expected_answer,
    mock_headers,
    new_request_id,
    wait_until,
)

CHUNKS = 5

CLASS_NAMES = ("cache_read_input", "cache_write_5m_input", "cache_write_1h_input", "reasoning_output")


def recorded(
    dataplane: Dataplane, mock: MockProvider, world: World, rid: str, *, route: str, model: str, stream: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The usage event of `rid` and the mock's record, checked against each other: same totals, and the
    event's classes exactly the ones the mock reported (absent ones are zero)."""
    provider = "mock-anthropic" if route == "/v1/messages" else "mock-openai"
    record = mock.only_request()
    event = dataplane.usage_event(rid)
    assert_usage_recorded(event, record, key=world.full_key, model=model, provider=provider, route=route, stream=stream)
    reported = record["usage"]["classes"]
    classes = event.get("classes", {})
    assert {name: classes.get(name, 0) for name in CLASS_NAMES} == {name: reported[name] for name in CLASS_NAMES}
    return event, record


def test_anthropic_stream_with_cache_read_and_write(
    clients: Clients, module_dataplane: Dataplane, mock: MockProvider, world: World
) -> None:
    rid = new_request_id()
    system = [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Say hello.", "cache_control": {"type": "ephemeral"}}]}
    ]
    with clients.anthropic(world.full_key).messages.stream(
        model=ANTHROPIC_MODEL,
        max_tokens=64,
        system=system,  # type: ignore[arg-type]
        messages=messages,  # type: ignore[arg-type]
        extra_headers={"x-request-id": rid, **mock_headers(chunks=CHUNKS)},
    ) as stream:
        text = "".join(stream.text_stream)
        message = stream.get_final_message()
    assert text == expected_answer(CHUNKS)
    event, record = recorded(
        module_dataplane, mock, world, rid, route="/v1/messages", model=ANTHROPIC_MODEL, stream=True
    )
    usage = message.usage
    read, write = usage.cache_read_input_tokens, usage.cache_creation_input_tokens
    assert read and write, f"the mock reported no cache use: {usage}"
    # The SDK sees Anthropic's convention (input_tokens without the cache); the event holds every input token,
    # the cache as its parts, the write in its one-hour class.
    assert event["input_tokens"] == usage.input_tokens + read + write
    assert event["output_tokens"] == usage.output_tokens == CHUNKS
    assert event["classes"] == {"cache_read_input": read, "cache_write_1h_input": write}
    assert usage.cache_creation is not None and usage.cache_creation.ephemeral_1h_input_tokens == write
    assert record["usage"]["input_tokens"] == event["input_tokens"]


def test_anthropic_message_with_a_five_minute_cache_write(
    clients: Clients, module_dataplane: Dataplane, mock: MockProvider, world: World
) -> None:
    rid = new_request_id()
    message = clients.anthropic(world.full_key).messages.create(
        model=ANTHROPIC_MODEL,
        max_tokens=64,
        system=[{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": "Say hello."}],
        extra_headers={"x-request-id": rid, **mock_headers(chunks=CHUNKS)},
    )
    event, _ = recorded(module_dataplane, mock, world, rid, route="/v1/messages", model=ANTHROPIC_MODEL, stream=False)
    usage = message.usage
    assert event["classes"] == {
        "cache_read_input": usage.cache_read_input_tokens,
        "cache_write_5m_input": usage.cache_creation_input_tokens,
    }


def test_openai_chat_with_cached_and_reasoning_tokens(
    clients: Clients, module_dataplane: Dataplane, mock: MockProvider, world: World
) -> None:
    rid = new_request_id()
    completion = clients.openai(world.full_key).chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Say hello."}],
        reasoning_effort="low",
        extra_body={"prompt_cache_key": "greeting"},
        extra_headers={"x-request-id": rid, **mock_headers(chunks=CHUNKS)},
    )
    assert completion.choices[0].message.content == expected_answer(CHUNKS)
    event, _ = recorded(
        module_dataplane, mock, world, rid, route="/v1/chat/completions", model=CHAT_MODEL, stream=False
    )
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens_details and usage.completion_tokens_details
    cached = usage.prompt_tokens_details.cached_tokens
    reasoning = usage.completion_tokens_details.reasoning_tokens
    assert cached and reasoning, f"the mock reported no classes: {usage}"
    # OpenAI's totals already hold their classes: reasoning is part of the completion, not counted twice.
    assert (event["input_tokens"], event["output_tokens"]) == (usage.prompt_tokens, usage.completion_tokens)
    assert event["classes"] == {"cache_read_input": cached, "reasoning_output": reasoning}


def test_openai_chat_stream_records_classes_from_the_usage_chunk_it_hides(
    clients: Clients, module_dataplane: Dataplane, mock: MockProvider, world: World
) -> None:
    """The client did not ask for usage: the proxy asks, reads the classes and cuts the chunk out."""
    rid = new_request_id()
    stream = clients.openai(world.full_key).chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Say hello."}],
        stream=True,
        reasoning_effort="low",
        extra_body={"prompt_cache_key": "greeting"},
        extra_headers={"x-request-id": rid, **mock_headers(chunks=CHUNKS)},
    )
    chunks = list(stream)
    assert all(c.usage is None for c in chunks)
    event, record = recorded(
        module_dataplane, mock, world, rid, route="/v1/chat/completions", model=CHAT_MODEL, stream=True
    )
    assert event["classes"]["reasoning_output"] == CHUNKS
    assert event["classes"]["cache_read_input"] == record["usage"]["input_tokens"] // 2


def test_responses_stream_with_cached_and_reasoning_tokens(
    clients: Clients, module_dataplane: Dataplane, mock: MockProvider, world: World
) -> None:
    rid = new_request_id()
    with clients.openai(world.full_key).responses.stream(
        model=CHAT_MODEL,
        input="Say hello.",
        reasoning={"effort": "low"},
        extra_body={"prompt_cache_key": "greeting"},
        extra_headers={"x-request-id": rid, **mock_headers(chunks=CHUNKS)},
    ) as stream:
        final = stream.get_final_response()
    event, _ = recorded(module_dataplane, mock, world, rid, route="/v1/responses", model=CHAT_MODEL, stream=True)
    usage = final.usage
    assert usage is not None
    assert event["classes"] == {
        "cache_read_input": usage.input_tokens_details.cached_tokens,
        "reasoning_output": usage.output_tokens_details.reasoning_tokens,
    }
    assert (event["input_tokens"], event["output_tokens"]) == (usage.input_tokens, usage.output_tokens)


def _cost_micro_usd(event: dict[str, Any], prices: dict[str, int]) -> int:
    """The limiter's count for one event: its exact cost in picodollars at `prices` (picodollars per token,
    by class; plain input and output are what the classes leave), rounded up to the micro-dollar."""
    classes = event.get("classes", {})
    plain_input = event["input_tokens"] - sum(v for k, v in classes.items() if k.endswith("_input"))
    plain_output = event["output_tokens"] - sum(v for k, v in classes.items() if k.endswith("_output"))
    pico = plain_input * prices["input"] + plain_output * prices["output"]
    for name, tokens in classes.items():
        base = prices["input"] if name.endswith("_input") else prices["output"]
        pico += tokens * prices.get(name, base)
    return -(-pico // 1_000_000)


def test_a_dollar_budget_holds_across_two_data_planes_sharing_redis(
    start_dataplane: Any, world: World, mock: MockProvider, tmp_path: Path
) -> None:
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        if os.environ.get("CI") == "true":
            pytest.fail("REDIS_URL is not set")
        pytest.skip("REDIS_URL is not set")
    budget_micro = 2_000  # $0.002
    limits = {
        "monthly_budget_usd": "0.002",
        "redis": {"url": redis_url, "key_prefix": f"molt-e2e:{uuid.uuid4().hex}:", "replicas": 2},
    }
    dataplanes = []
    for name in ("a", "b"):
        config = world.config(tmp_path / name, tls=False)
        for model in config["models"]:
            if model["name"] == CHAT_MODEL:
                # $1 per 1M tokens: 1 µ$ a token; cached prompt tokens a tenth of that.
                model["price"] = {"input": "1", "output": "1", "cache_read_input": "0.10"}
        config["limits"] = limits
        dataplanes.append(start_dataplane(config))
    for dp in dataplanes:
        wait_until(lambda dp=dp: "molt_limits_redis_fallback 0" in dp.metrics() or None, "limits on Redis")
    prices = {"input": 1_000_000, "output": 1_000_000, "cache_read_input": 100_000}
    body = {
        "model": CHAT_MODEL,
        "max_tokens": 16,
        "prompt_cache_key": "greeting",
        "messages": [{"role": "user", "content": "Say hello."}],
    }
    spent_ids: list[tuple[int, str]] = []
    final_refusals: set[int] = set()
    for i in range(400):
        which = i % 2
        if which in final_refusals:
            if len(final_refusals) == 2:
                break
            continue
        rid = new_request_id()
        headers = {"authorization": f"Bearer {world.full_key.secret}", "x-request-id": rid, **mock_headers(chunks=2)}
        r = httpx.post(f"{dataplanes[which].url}/v1/chat/completions", json=body, headers=headers, timeout=30)
        if r.status_code == 200:
            assert r.headers["x-ratelimit-limit-usd"] == "0.002"
            spent_ids.append((which, rid))
            continue
        assert r.status_code == 429, r.text
        assert r.json()["error"]["type"] == "budget_exceeded", r.text
        if int(r.headers["retry-after"]) > 60:
            # Redis says the month's budget is gone (not just a lease in flight).
            final_refusals.add(which)
        else:
            time.sleep(0.2)
    assert final_refusals == {0, 1}, "the budget never ran out on both data planes"
    spent = sum(_cost_micro_usd(dataplanes[w].usage_event(rid), prices) for w, rid in spent_ids)
    # Every admitted answer was really priced by class (cached prompt tokens at a tenth).
    assert all(dataplanes[w].usage_event(rid)["classes"]["cache_read_input"] > 0 for w, rid in spent_ids)
    # Global, not per replica: each alone would have admitted the whole budget. A request is admitted against
    # its estimate (prompt + 16 output tokens, ~50 µ$), and a replica may overdraw by at most one lease
    # (5% of the budget) while a grant is in flight.
    print(f"spent {spent} µ$ of a {budget_micro} µ$ budget in {len(spent_ids)} answers across 2 data planes")
    estimate = 80
    lease = budget_micro // 20
    assert budget_micro - 2 * estimate <= spent <= budget_micro + 2 * lease, (spent, len(spent_ids))
    for dp in dataplanes:
        assert 'molt_limit_decisions_total{decision="rejected",kind="monthly_dollar_budget"}' in dp.metrics()
