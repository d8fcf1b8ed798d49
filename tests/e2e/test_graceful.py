"""SIGTERM drains in-flight streams within server.grace_period, then the process exits 0."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import httpx

from harness import (
    CHAT_MODEL,
    MockProvider,
    StartDataplane,
    World,
    expected_answer,
    mock_headers,
    new_request_id,
    sse_json,
)

GRACE_S = 8
CHUNKS = 10
SLOW = mock_headers(chunks=CHUNKS, chunk_delay_ms=300)  # ~3 s, well inside the grace period


def refuses_connections(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_sigterm_drains_a_slow_stream(
    start_dataplane: StartDataplane, mock: MockProvider, world: World, tmp_path: Path
) -> None:
    config = world.config(tmp_path / "config")
    config["server"]["grace_period"] = f"{GRACE_S}s"
    dataplane = start_dataplane(config)
    rid = new_request_id()
    first_chunk = threading.Event()
    body = bytearray()
    errors: list[BaseException] = []

    def stream() -> None:
        try:
            with httpx.Client(base_url=dataplane.url, timeout=30) as client:
                with client.stream(
                    "POST",
                    "/v1/chat/completions",
                    json={"model": CHAT_MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
                    headers={"authorization": f"Bearer {world.full_key.secret}", "x-request-id": rid, **SLOW},
                ) as response:
                    assert response.status_code == 200
                    for chunk in response.iter_bytes():
                        body.extend(chunk)
                        first_chunk.set()
        except BaseException as error:  # reported by the main thread
            errors.append(error)
            first_chunk.set()

    client_thread = threading.Thread(target=stream, daemon=True)
    client_thread.start()
    assert first_chunk.wait(10), "the stream never started"
    dataplane.stop()

    client_thread.join(GRACE_S + 5)
    assert not client_thread.is_alive(), "the stream did not finish within the grace period"
    assert not errors, f"the in-flight stream failed during shutdown: {errors[0]!r}"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in sse_json(bytes(body)) if e["choices"])
    assert text == expected_answer(CHUNKS)
    assert bytes(body).rstrip().endswith(b"data: [DONE]")

    assert dataplane.wait_exit(GRACE_S + 10) == 0
    assert set(dataplane.listeners) == {"http", "https", "admin"}
    for address in dataplane.listeners.values():
        assert refuses_connections(address), f"{address} still accepts connections after exit"
    assert [e["request_id"] for e in dataplane.usage_events()].count(rid) == 1, "the drained stream's usage was lost"


def test_sigterm_with_nothing_in_flight_exits_at_once(
    start_dataplane: StartDataplane, world: World, tmp_path: Path
) -> None:
    config = world.config(tmp_path / "config")
    config["server"]["grace_period"] = "30s"
    dataplane = start_dataplane(config)
    # One request first, so there was traffic (and a pooled keep-alive connection that the drain must end).
    with httpx.Client(base_url=dataplane.url, timeout=10) as client:
        assert client.get("/v1/models", headers={"authorization": f"Bearer {world.full_key.secret}"}).status_code == 200
        started = time.monotonic()
        dataplane.stop()
        assert dataplane.wait_exit(10) == 0
    took = time.monotonic() - started
    # The grace period is 30 s; with nothing in flight the process does not wait it out.
    assert took < 5, f"an idle data plane took {took:.1f}s to stop"
    for address in dataplane.listeners.values():
        assert refuses_connections(address), f"{address} still accepts connections after exit"
