"""Config reload (SIGHUP / file change) under load: streams survive, good configs apply, bad ones don't."""

from __future__ import annotations

import copy
from collections.abc import Callable
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness import (
    CHAT_MODEL,
    ClientKey,
    Dataplane,
    assert_no_secrets,
    MockProvider,
    StartDataplane,
    World,
    expected_answer,
    mock_headers,
    new_client_key,
    sse_json,
    to_toml,
    wait_until,
)

STREAMS = 4
SLOW_CHUNKS = 15
SLOW = mock_headers(chunks=SLOW_CHUNKS, chunk_delay_ms=200)  # ~3 s per stream
NEW_MODEL = "gpt-4o"
FAILURES = "molt_config_reload_failures_total"
VERSION = "molt_config_version"


def chat(dataplane: Dataplane, key: ClientKey, model: str = CHAT_MODEL, **headers: str) -> httpx.Response:
    """A streaming chat request, read to the end."""
    with httpx.Client(base_url=dataplane.url, timeout=30) as client:
        response = client.post(
            "/v1/chat/completions",
            json={"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
            headers={"authorization": f"Bearer {key.secret}", **headers},
        )
        response.read()
        return response


def streamed_text(response: httpx.Response) -> str:
    return "".join(e["choices"][0]["delta"].get("content", "") for e in sse_json(response.content) if e["choices"])


def key_is_accepted(dataplane: Dataplane, key: ClientKey) -> bool:
    """Asked of GET /v1/models, which the data plane answers itself (no upstream traffic)."""
    response = httpx.get(f"{dataplane.url}/v1/models", headers={"authorization": f"Bearer {key.secret}"}, timeout=5)
    assert response.status_code in (200, 401), response.text
    return response.status_code == 200


def with_key_and_model(config: dict[str, Any], key: ClientKey, model: str) -> dict[str, Any]:
    new = copy.deepcopy(config)
    new["keys"].append(key.config_entry())
    new["models"].append({"name": model, "provider": "mock-openai"})
    return new


def test_reload_mid_stream(start_dataplane: StartDataplane, mock: MockProvider, world: World, tmp_path: Path) -> None:
    config = world.config(tmp_path / "config")
    dataplane = start_dataplane(config)
    new_key = new_client_key("k-new", "user-new")
    version_before = dataplane.metric_value(VERSION)

    with ThreadPoolExecutor(STREAMS) as pool:
        streams = [pool.submit(chat, dataplane, world.full_key, **SLOW) for _ in range(STREAMS)]
        wait_until(lambda: len(mock.requests()) >= STREAMS, "all streams to reach upstream", timeout=10)
        dataplane.reload(with_key_and_model(config, new_key, NEW_MODEL))
        wait_until(lambda: key_is_accepted(dataplane, new_key), "the new key to be accepted", timeout=10)
        assert not any(s.done() for s in streams), "streams finished before the reload applied; slow them down"
        responses = [s.result(timeout=30) for s in streams]

    for response in responses:
        assert response.status_code == 200
        assert streamed_text(response) == expected_answer(SLOW_CHUNKS)
        assert response.content.rstrip().endswith(b"data: [DONE]")
    assert dataplane.metric_value(VERSION) != version_before

    mock.clear()
    response = chat(dataplane, new_key, NEW_MODEL, **mock_headers(chunks=2))
    assert response.status_code == 200, response.text
    assert streamed_text(response) == expected_answer(2)
    assert mock.only_request()["model"] == NEW_MODEL


def _unparseable(good: dict[str, Any]) -> str:
    return to_toml(good) + "\n[server\nlisten = = broken\n"


def _unknown_provider(good: dict[str, Any]) -> dict[str, Any]:
    bad = copy.deepcopy(good)
    bad["models"].append({"name": "orphan", "provider": "no-such-provider"})
    return bad


@pytest.mark.parametrize("make_bad", [_unparseable, _unknown_provider], ids=["invalid-toml", "invalid-config"])
def test_bad_reload_keeps_the_old_config(
    start_dataplane: StartDataplane,
    mock: MockProvider,
    world: World,
    tmp_path: Path,
    make_bad: Callable[[dict[str, Any]], dict[str, Any] | str],
) -> None:
    config = world.config(tmp_path / "config")
    dataplane = start_dataplane(config)
    rejected_key = new_client_key("k-rejected", "user-rejected")
    failures_before = dataplane.metric_value(FAILURES)
    version_before = dataplane.metric_value(VERSION)

    dataplane.reload(make_bad(with_key_and_model(config, rejected_key, NEW_MODEL)))
    wait_until(lambda: dataplane.metric_value(FAILURES) > failures_before, f"{FAILURES} to grow", timeout=10)

    assert dataplane.process.alive()
    assert dataplane.metric_value(VERSION) == version_before
    assert not key_is_accepted(dataplane, rejected_key)
    response = chat(dataplane, world.full_key, **mock_headers(chunks=2))
    assert response.status_code == 200 and streamed_text(response) == expected_answer(2)

    # A good config afterwards still applies.
    dataplane.reload(with_key_and_model(config, rejected_key, NEW_MODEL))
    wait_until(lambda: key_is_accepted(dataplane, rejected_key), "the corrected config to apply", timeout=10)


def test_a_configmap_style_swap_reloads(world: World, mock: MockProvider, tmp_path: Path) -> None:
    """Kubernetes mounts a ConfigMap as a directory of symlinks: `molt.toml -> ..data/molt.toml`, `..data ->
    ..<timestamp>`. An update writes a new timestamped directory and renames a new `..data` over the old one, so
    the file's own name never sees an event. The data plane must reload on that swap (the Helm chart relies on it)."""
    mount = tmp_path / "configmap"
    mount.mkdir()

    def publish(config: dict[str, Any], generation: int) -> None:
        # What the kubelet's atomic writer does, step by step.
        data = mount / f"..2026_01_01_00_00_{generation:02}.000000001"
        data.mkdir()
        (data / "molt.toml").write_text(to_toml(config))
        (mount / "..data_tmp").symlink_to(data.name)
        os.replace(mount / "..data_tmp", mount / "..data")

    config = world.config(tmp_path / "config")
    publish(config, 1)
    (mount / "molt.toml").symlink_to("..data/molt.toml")
    dataplane = Dataplane(config, tmp_path / "dataplane", config_path=mount / "molt.toml")
    try:
        new_key = new_client_key("k-configmap", "user-configmap")
        assert not key_is_accepted(dataplane, new_key)
        reloads = dataplane.metric_value("molt_config_reloads_total")
        publish(with_key_and_model(config, new_key, NEW_MODEL), 2)
        wait_until(lambda: key_is_accepted(dataplane, new_key), "the swapped-in config to apply", timeout=10)
        assert dataplane.metric_value("molt_config_reloads_total") == reloads + 1
        assert dataplane.metric_value(FAILURES) == 0
    finally:
        dataplane.kill()
        assert_no_secrets(dataplane.logs(), "data plane log")
