"""Key rotation without downtime, end to end with the real binaries.

- A provider's master key: the operator adds the new key at the provider (both valid there), sets it on the
  provider through the control plane, waits until the data plane serves the new config version, then revokes the
  old key at the provider. Requests in flight across the change and after it never fail, and once the data plane
  has the new version every upstream request carries the new key.
- The control plane's at-rest key: restart with the new key current and the old one previous, `molt ctl secrets
  reencrypt`, restart without the old key. The data plane serves throughout, its config never fails to load, and
  the snapshot it is served is the same.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness import (
    CHAT_MODEL,
    CONTROLPLANE_TOKEN_ENV,
    MOLT_BIN,
    SECRETS,
    ControlPlane,
    Dataplane,
    MockProvider,
    StartDataplane,
    World,
    mock_headers,
    new_secret,
    require_binary,
    serve_controlplane,
    wait_until,
)

PREVIOUS_KEYS_ENV = "MOLT_E2E_CP_PREVIOUS_KEYS"


@pytest.fixture
def controlplane(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ControlPlane]:
    # The standard secrets plus previous at-rest keys (empty: none until a rotation).
    cp = ControlPlane(
        tmp_path / "controlplane",
        extra_config={
            "secrets": {
                "encryption_key_env": "MOLT_E2E_CP_KEY",
                "previous_encryption_keys_env": PREVIOUS_KEYS_ENV,
                "dataplane_token_env": "MOLT_E2E_CP_DATAPLANE_TOKEN",
                "bootstrap_admin_token_env": "MOLT_E2E_CP_ADMIN_TOKEN",
            }
        },
        extra_env={PREVIOUS_KEYS_ENV: ""},
    )
    monkeypatch.setenv(CONTROLPLANE_TOKEN_ENV, cp.dataplane_token)
    yield from serve_controlplane(cp)


def accept_keys(mock: MockProvider, keys: list[str]) -> None:
    """The keys the mock provider accepts from now on (any, if empty)."""
    httpx.put(f"{mock.url}/_mock/keys", json={"accepted": keys}, timeout=5).raise_for_status()


def dataplane_config(world: World, cp: ControlPlane, workdir: Path) -> dict[str, Any]:
    config = world.config(workdir, tls=False)
    for section in ("keys", "providers", "models", "auth"):
        config.pop(section)
    config["control_plane"] = cp.dataplane_section(workdir)
    return config


def provision(cp: ControlPlane, mock: MockProvider, master: str) -> str:
    """Provider (master key `master`), model, user and key through the API; returns the client key."""
    cp.api(
        "POST",
        "/providers",
        {"name": "mock-openai", "kind": "openai", "base_url": mock.base_url, "keys": [master]},
        expect=201,
    )
    cp.api(
        "POST",
        "/models",
        {"name": CHAT_MODEL, "provider": "mock-openai", "price": {"input": "1.00", "output": "2.00"}},
        expect=201,
    )
    user = cp.api("POST", "/users", {"email": f"e2e-{uuid.uuid4().hex[:8]}@example.com"}, expect=201)
    created = cp.api("POST", "/keys", {"user_id": user["id"]}, expect=201)
    SECRETS.add(created["secret"])
    return created["secret"]


def chat(client: httpx.Client, dataplane: Dataplane, secret: str, stream: bool) -> tuple[int, bytes]:
    # Streams of 6 chunks 50 ms apart, so some are in flight whenever the config changes.
    headers = {"authorization": f"Bearer {secret}", **mock_headers(chunks=6, chunk_delay_ms=50 if stream else None)}
    with client.stream(
        "POST",
        f"{dataplane.url}/v1/chat/completions",
        json={"model": CHAT_MODEL, "stream": stream, "messages": [{"role": "user", "content": "hi"}]},
        headers=headers,
    ) as response:
        return response.status_code, response.read()


@dataclass
class Exchange:
    started: float
    ended: float
    status: int
    complete: bool


@dataclass
class Load:
    """Client threads sending chat requests (half of them streams) until stopped; remembers every exchange."""

    dataplane: Dataplane
    secret: str
    exchanges: list[Exchange] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self, threads: int = 4) -> None:
        for i in range(threads):
            thread = threading.Thread(target=self._run, args=(i % 2 == 0,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _run(self, stream: bool) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    status, body = chat(client, self.dataplane, self.secret, stream)
                except httpx.HTTPError:
                    status, body = 0, b""
                complete = status == 200 and (b"data: [DONE]" in body if stream else b'"usage"' in body)
                with self._lock:
                    self.exchanges.append(Exchange(started, time.monotonic(), status, complete))

    def stop(self) -> list[Exchange]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        return self.exchanges


def wait_for_200(dataplane: Dataplane, secret: str) -> None:
    with httpx.Client(timeout=5) as client:
        wait_until(lambda: chat(client, dataplane, secret, False)[0] == 200, "the client key to reach the data plane")


def wait_for_config_version(dataplane: Dataplane, above: float) -> float:
    return wait_until(
        lambda: (v := dataplane.metric_value("molt_control_plane_snapshot_version")) > above and v,
        "the data plane to serve the new config version",
        timeout=5,
    )


def test_provider_master_key_rotates_with_no_failed_request(
    world: World, mock: MockProvider, start_dataplane: StartDataplane, controlplane: ControlPlane, tmp_path: Path
) -> None:
    old, new = new_secret("sk-old-"), new_secret("sk-new-")
    accept_keys(mock, [old])
    try:
        dataplane = start_dataplane(dataplane_config(world, controlplane, tmp_path / "dp"))
        secret = provision(controlplane, mock, old)
        wait_for_200(dataplane, secret)
        load = Load(dataplane, secret)
        load.start()
        time.sleep(1.0)

        # At the provider: the new key made, both valid. At the control plane: the provider's key replaced.
        accept_keys(mock, [old, new])
        before = dataplane.metric_value("molt_control_plane_snapshot_version")
        changed_at = time.monotonic()
        provider = controlplane.api("PATCH", "/providers/mock-openai", {"keys": [new]}, expect=200)
        assert provider["key_count"] == 1
        wait_for_config_version(dataplane, before)
        swapped_at = time.monotonic()
        # Requests admitted before the swap may still be reaching the provider for a moment.
        time.sleep(0.5)
        seen_by_swap = max(r["id"] for r in mock.requests())
        time.sleep(1.0)

        # Only now the old key is revoked at the provider.
        accept_keys(mock, [new])
        revoked_at = time.monotonic()
        time.sleep(1.0)
        exchanges = load.stop()
    finally:
        accept_keys(mock, [])

    failed = [e for e in exchanges if not e.complete]
    assert not failed, f"{len(failed)} of {len(exchanges)} requests failed: {failed[:5]}"
    across = [e for e in exchanges if e.started < swapped_at and e.ended > swapped_at]
    after_revoke = [e for e in exchanges if e.started > revoked_at]
    assert across and after_revoke and len(exchanges) > 40, (len(across), len(after_revoke), len(exchanges))

    records = mock.requests()
    keys = [(r["id"], (r["authorization"] or "").removeprefix("Bearer ")) for r in records]
    assert {k for _, k in keys} == {old, new}, "the upstream saw a key other than the provider's two"
    late_old = [i for i, k in keys if i > seen_by_swap and k == old]
    assert not late_old, f"requests after the new version reached the provider with the old key: {late_old[:5]}"
    assert dataplane.metric_value("molt_config_reload_failures_total") == 0
    print(
        f"{len(exchanges)} requests, {len(across)} in flight across the swap "
        f"({swapped_at - changed_at:.3f}s from PATCH to the new version), {len(after_revoke)} after the revoke"
    )


def ctl(cp: ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    binary = require_binary(MOLT_BIN, "molt binary")
    env = {**os.environ, "MOLT_ADMIN_URL": cp.url, "MOLT_ADMIN_TOKEN": cp.admin_token, "RUST_BACKTRACE": "0"}
    return subprocess.run([binary, "ctl", *args], capture_output=True, text=True, timeout=60, check=False, env=env)


def served_snapshot(cp: ControlPlane) -> dict[str, Any]:
    """The snapshot the control plane serves data planes, without its version."""
    response = httpx.get(
        f"{cp.url}/internal/v1/config?after=0",
        headers={"authorization": f"Bearer {cp.dataplane_token}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    body.pop("version")
    return body


def test_at_rest_key_rotates_while_the_dataplane_serves(
    world: World, mock: MockProvider, start_dataplane: StartDataplane, controlplane: ControlPlane, tmp_path: Path
) -> None:
    cp = controlplane
    old_key, new_key = f"k1:{secrets.token_hex(32)}", f"k2:{secrets.token_hex(32)}"
    SECRETS.update({old_key, new_key, old_key[3:], new_key[3:]})
    cp.set_env(MOLT_E2E_CP_KEY=old_key)
    cp.kill()
    cp.start()
    dataplane = start_dataplane(dataplane_config(world, cp, tmp_path / "dp"))
    secret = provision(cp, mock, new_secret("sk-master-"))
    wait_for_200(dataplane, secret)
    before = served_snapshot(cp)
    load = Load(dataplane, secret)
    load.start()

    # 1. The new key current, the old one previous.
    cp.set_env(MOLT_E2E_CP_KEY=new_key, **{PREVIOUS_KEYS_ENV: old_key})
    cp.kill()
    cp.start()
    status = json.loads(ctl(cp, "secrets", "status").stdout)
    assert status["current_key_id"] == "k2" and status["sealed"] == {"k1": 1} and status["stale"] == 1, status

    # 2. Re-encrypt: everything under the new key.
    result = ctl(cp, "secrets", "reencrypt")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["rewritten"] == 1 and report["status"]["sealed"] == {"k2": 1}, report
    assert served_snapshot(cp) == before

    # 3. The old key dropped: everything still opens, the same snapshot is served.
    cp.set_env(**{PREVIOUS_KEYS_ENV: ""})
    cp.kill()
    cp.start()
    assert served_snapshot(cp) == before
    status = json.loads(ctl(cp, "secrets", "status").stdout)
    assert status["stale"] == 0 and status["missing_key_ids"] == [], status
    time.sleep(1.0)
    exchanges = load.stop()

    failed = [e for e in exchanges if not e.complete]
    assert not failed, f"{len(failed)} of {len(exchanges)} requests failed: {failed[:5]}"
    assert dataplane.metric_value("molt_config_reload_failures_total") == 0
    audit = cp.api("GET", "/audit?limit=5", expect=200)["items"]
    assert any(e["action"] == "secrets.reencrypt" and e["target"] == "k2" for e in audit), audit
