"""Limits through the real data plane: 429s in each route's format with retry-after, the
OpenAI-style x-ratelimit headers on every admitted response, token budgets settled from the
usage the provider reported, the concurrent-stream cap, and counters kept across a reload."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx

from harness import (
    ANTHROPIC_MODEL,
    CHAT_MODEL,
    Dataplane,
    MockProvider,
    World,
    assert_anthropic_error,
    assert_openai_error,
    mock_headers,
    new_request_id,
    wait_until,
)

RATELIMIT_HEADERS = [
    f"x-ratelimit-{what}-{kind}" for kind in ("requests", "tokens") for what in ("limit", "remaining", "reset")
]


def chat(dataplane: Dataplane, world: World, **extra: Any) -> httpx.Response:
    body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16, **extra}
    headers = {"authorization": f"Bearer {world.full_key.secret}", "x-request-id": new_request_id(), **mock_headers(chunks=2)}
    return httpx.post(f"{dataplane.url}/v1/chat/completions", json=body, headers=headers, timeout=30)


def limited_config(world: World, workdir: Path, limits: dict[str, Any]) -> dict[str, Any]:
    config = world.config(workdir, tls=False)
    config["limits"] = limits
    return config


def test_request_limit_gives_429_with_headers_in_both_formats(
    start_dataplane: Any, world: World, mock: MockProvider, tmp_path: Path
) -> None:
    dp = start_dataplane(limited_config(world, tmp_path, {"requests_per_minute": 3}))
    ok = [chat(dp, world) for _ in range(3)]
    for i, r in enumerate(ok):
        assert r.status_code == 200, r.text
        for h in RATELIMIT_HEADERS[:3]:
            assert h in r.headers, (h, dict(r.headers))
        assert r.headers["x-ratelimit-limit-requests"] == "3"
        assert r.headers["x-ratelimit-remaining-requests"] == str(2 - i)
    forwarded = len(mock.requests())

    refused = chat(dp, world)
    err = assert_openai_error(refused, 429)
    assert err["code"] == "rate_limit_exceeded"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert len(mock.requests()) == forwarded, "a refused request reached the provider"

    anthropic = httpx.post(
        f"{dp.url}/v1/messages",
        json={"model": ANTHROPIC_MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-api-key": world.full_key.secret},
        timeout=30,
    )
    error = assert_anthropic_error(anthropic, 429)
    assert error["type"] == "rate_limit_error"
    assert "retry-after" in anthropic.headers
    event = next(e for e in reversed(dp.usage_events()) if e["status"] == 429)
    assert event["outcome"] == "rate_limited"
    assert 'molt_limit_decisions_total{decision="rejected",kind="requests_per_minute"}' in dp.metrics()


def test_token_limit_is_settled_from_reported_usage(
    start_dataplane: Any, world: World, mock: MockProvider, tmp_path: Path
) -> None:
    # Each request is admitted against its estimate (body/4 + max_tokens) and then charged what the
    # mock reported; the remaining-tokens header must follow the actual charges.
    dp = start_dataplane(limited_config(world, tmp_path, {"tokens_per_minute": 400}))
    first = chat(dp, world)
    assert first.status_code == 200, first.text
    used = first.json()["usage"]["total_tokens"]
    second = chat(dp, world)
    assert second.status_code == 200, second.text
    # After the first settled, 400 - used remained before the second was admitted against its estimate.
    assert int(second.headers["x-ratelimit-remaining-tokens"]) <= 400 - used
    # A request whose estimate cannot fit is refused up front, before any byte goes upstream.
    forwarded = len(mock.requests())
    huge = chat(dp, world, max_tokens=100_000)
    err = assert_openai_error(huge, 429)
    assert err["type"] == "tokens"
    assert len(mock.requests()) == forwarded


def test_concurrent_stream_cap(start_dataplane: Any, world: World, tmp_path: Path) -> None:
    dp = start_dataplane(limited_config(world, tmp_path, {"concurrent_streams": 1}))
    started = threading.Event()
    results: list[int] = []

    def slow_stream() -> None:
        headers = {"authorization": f"Bearer {world.full_key.secret}", **mock_headers(chunks=6, chunk_delay_ms=150)}
        body = {"model": CHAT_MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        with httpx.stream("POST", f"{dp.url}/v1/chat/completions", json=body, headers=headers, timeout=30) as r:
            started.set()
            results.append(r.status_code)
            for _ in r.iter_bytes():
                pass

    t = threading.Thread(target=slow_stream)
    t.start()
    assert started.wait(10)
    second = chat(dp, world, stream=True)
    assert_openai_error(second, 429)
    t.join(30)
    assert results == [200]
    # The slot is released when the first stream ends.
    assert chat(dp, world, stream=True).status_code == 200


def test_reload_keeps_counters(start_dataplane: Any, world: World, tmp_path: Path) -> None:
    config = limited_config(world, tmp_path, {"requests_per_minute": 2})
    dp = start_dataplane(config)
    assert chat(dp, world).status_code == 200
    assert chat(dp, world).status_code == 200
    before = dp.metric_value("molt_config_version")
    config["limits"] = {"requests_per_minute": 3}
    dp.reload(config)
    wait_until(lambda: dp.metric_value("molt_config_version") > before or None, "reload applied")
    # Two of three already used before the reload: one more, then 429.
    assert chat(dp, world).status_code == 200
    assert chat(dp, world).status_code == 429
