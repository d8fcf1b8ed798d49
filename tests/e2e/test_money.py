"""Exact money through a real control plane and data plane: a chat through the real OpenAI SDK is stored with its
cost fixed at ingest, at the price in force, in integer picodollars; a price change afterwards leaves that cost as it
was and prices the next request at the new version. Token classes are priced apart: a batch with cache reads, cache
writes and reasoning, posted to `/internal/v1/usage` as a data plane posts it, costs exactly the price table."""

from __future__ import annotations

import sqlite3
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai

from harness import CHAT_MODEL, ControlPlane, MockProvider, StartDataplane, World, wait_until
from test_control_plane import Tenant, controlplane, dataplane_config, provision, wait_for_status

__all__ = ["controlplane"]  # the fixture, used by name

PICO_PER_MICRO = 1_000_000  # $1 per 1M tokens is 1 picodollar per token


def stored(cp: ControlPlane, request_id: str) -> tuple[int, int, int | None, str | None] | None:
    """(input_tokens, output_tokens, cost_pico, price_version) of the usage row of `request_id`, if stored."""
    with sqlite3.connect(f"file:{cp.db_path}?mode=ro", uri=True, timeout=5) as db:
        row = db.execute(
            "SELECT input_tokens, output_tokens, cost_pico, price_version FROM usage_events WHERE request_id = ?",
            (request_id,),
        ).fetchone()
    return tuple(row) if row else None


def chat_once(client: openai.OpenAI) -> str:
    """One chat through the OpenAI SDK; returns the request id the client saw."""
    raw = client.chat.completions.with_raw_response.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": "what does a token cost?"}]
    )
    raw.parse()
    return raw.headers["x-request-id"]


def wait_stored(cp: ControlPlane, request_id: str) -> tuple[int, int, int | None, str | None]:
    return wait_until(lambda: stored(cp, request_id), f"usage row of {request_id}", timeout=10)


def test_cost_is_fixed_at_ingest_and_a_price_change_does_not_alter_it(
    world: World, mock: MockProvider, start_dataplane: StartDataplane, controlplane: ControlPlane, tmp_path: Path
) -> None:
    dataplane = start_dataplane(dataplane_config(world, controlplane, tmp_path / "dp"))
    tenant: Tenant = provision(controlplane, world, mock, price={"input": "1.25", "output": "10"})
    wait_for_status(dataplane, tenant.secret, 200)
    client = openai.OpenAI(base_url=f"{dataplane.url}/v1", api_key=tenant.secret, max_retries=0)

    first = chat_once(client)
    tokens_in, tokens_out, cost, version = wait_stored(controlplane, first)
    assert tokens_in > 0 and tokens_out > 0
    assert cost == tokens_in * 1_250_000 + tokens_out * 10 * PICO_PER_MICRO
    history = controlplane.api("GET", f"/models/{CHAT_MODEL}/prices", expect=200)
    assert [v["id"] for v in history] == [version]

    # The operator doubles the price; the new version is in force from now.
    new = controlplane.api(
        "PUT", f"/models/{CHAT_MODEL}/price", {"price": {"input": "2.50", "output": "20"}}, expect=201
    )
    assert new["price"] == {"input": "2.50", "output": "20.00"}
    time.sleep(0.01)
    second = chat_once(client)
    in2, out2, cost2, version2 = wait_stored(controlplane, second)
    assert version2 == new["id"]
    assert cost2 == in2 * 2_500_000 + out2 * 20 * PICO_PER_MICRO

    # The first event's cost is what it was; the report sums the stored costs, exactly.
    assert stored(controlplane, first) == (tokens_in, tokens_out, cost, version)
    totals = controlplane.api("GET", f"/usage?user_id={tenant.user_id}", expect=200)["totals"]
    rows = stored_costs(controlplane, tenant.user_id)
    assert Decimal(totals["cost_usd"]) == Decimal(sum(rows)) / 10**12
    assert totals["unpriced_events"] == 0
    assert totals["tokens_by_class"]["input"] == totals["input_tokens"]


def stored_costs(cp: ControlPlane, user_id: str) -> list[int]:
    with sqlite3.connect(f"file:{cp.db_path}?mode=ro", uri=True, timeout=5) as db:
        return [r[0] for r in db.execute("SELECT cost_pico FROM usage_events WHERE user_id = ?", (user_id,))]


def usage_event(user_id: str, classes: dict[str, int], tokens: tuple[int, int]) -> dict[str, Any]:
    return {
        "event_id": f"evt-{uuid.uuid4().hex}", "request_id": f"req-{uuid.uuid4().hex}",
        "timestamp_ms": int(time.time() * 1000), "key_id": "key_e2e", "user_id": user_id, "model": CHAT_MODEL,
        "provider": "mock-openai", "route": "chat.completions", "status": 200, "input_tokens": tokens[0],
        "output_tokens": tokens[1], "classes": classes, "estimated": False, "stream": True, "attempts": 1,
        "duration_ms": 5, "outcome": "ok",
    }  # fmt: skip


def test_token_classes_are_priced_apart(world: World, mock: MockProvider, controlplane: ControlPlane) -> None:
    price = {"input": "3", "cache_read_input": "0.30", "cache_write_5m_input": "3.75",
             "cache_write_1h_input": "6", "output": "15", "reasoning_output": "12"}  # fmt: skip
    tenant = provision(controlplane, world, mock, price=price)
    # As a data plane sends it: 10,000 input of which 6,000 cache reads and 2,000 + 1,000 cache writes; 2,000
    # output of which 500 reasoning.
    classes = {"cache_read_input": 6000, "cache_write_5m_input": 2000, "cache_write_1h_input": 1000,
               "reasoning_output": 500}  # fmt: skip
    event = usage_event(tenant.user_id, classes, (10_000, 2_000))
    response = httpx.post(
        f"{controlplane.url}/internal/v1/usage",
        json={"events": [event]},
        headers={"authorization": f"Bearer {controlplane.dataplane_token}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": 1, "duplicates": 0}
    _, _, cost, _ = stored(controlplane, event["request_id"]) or (0, 0, None, None)
    # 1000×3 + 6000×0.30 + 2000×3.75 + 1000×6 + 1500×15 + 500×12 micro-dollars.
    assert cost == (3000 + 1800 + 7500 + 6000 + 22500 + 6000) * PICO_PER_MICRO
    totals = controlplane.api("GET", f"/usage?user_id={tenant.user_id}", expect=200)["totals"]
    assert totals["cost_usd"] == "0.0468"
    assert totals["cost_by_class"]["reasoning_output"] == "0.006"
    assert totals["tokens_by_class"]["cache_write_1h_input"] == 1000
