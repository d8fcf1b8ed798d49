"""A data plane fed by a real control plane: API changes (plans' limits among them) reach it within a second, and
usage lands in the control plane's database exactly once, even when either side is killed with SIGKILL."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness import (
    CHAT_MODEL,
    CONTROLPLANE_TOKEN_ENV,
    SECRETS,
    ControlPlane,
    Dataplane,
    MockProvider,
    StartDataplane,
    World,
    serve_controlplane,
    wait_until,
)

PROPAGATION_DEADLINE = 1.0


@pytest.fixture
def controlplane(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ControlPlane]:
    cp = ControlPlane(tmp_path / "controlplane")
    # Data planes started by the test inherit the environment and read their token from it.
    monkeypatch.setenv(CONTROLPLANE_TOKEN_ENV, cp.dataplane_token)
    yield from serve_controlplane(cp)


def dataplane_config(world: World, cp: ControlPlane, workdir: Path, ship_interval: str = "200ms") -> dict[str, Any]:
    """The standard config with nothing managed in the file: keys, providers and models come from `cp`."""
    config = world.config(workdir, tls=False)
    for section in ("keys", "providers", "models", "auth"):
        config.pop(section)
    config["control_plane"] = cp.dataplane_section(workdir, ship_interval)
    return config


@dataclass
class Tenant:
    user_id: str
    key_id: str
    secret: str


def provision(
    cp: ControlPlane, world: World, mock: MockProvider, plan: str | None = None, price: dict[str, str] | None = None
) -> Tenant:
    """Provider, model (at `price`, USD per 1M tokens; default $1 input, $2 output), user (on `plan`, if given) and
    key through the API; returns the key (not yet known to be live)."""
    cp.api(
        "POST",
        "/providers",
        {"name": "mock-openai", "kind": "openai", "base_url": mock.base_url, "keys": world.openai_masters},
        expect=201,
    )
    cp.api(
        "POST",
        "/models",
        {"name": CHAT_MODEL, "provider": "mock-openai", "price": price or {"input": "1", "output": "2"}},
        expect=201,
    )
    user = cp.api("POST", "/users", {"email": f"e2e-{uuid.uuid4().hex[:8]}@example.com", "plan": plan}, expect=201)
    created = cp.api("POST", "/keys", {"user_id": user["id"]}, expect=201)
    SECRETS.add(created["secret"])
    return Tenant(user["id"], created["key"]["id"], created["secret"])


def chat(client: httpx.Client, dataplane: Dataplane, secret: str, stream: bool = False) -> httpx.Response:
    response = client.post(
        f"{dataplane.url}/v1/chat/completions",
        json={"model": CHAT_MODEL, "stream": stream, "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {secret}"},
    )
    response.read()
    return response


def wait_for_status(dataplane: Dataplane, secret: str, status: int) -> float:
    """Seconds until a chat request with `secret` gets `status`; fails past PROPAGATION_DEADLINE."""
    start = time.monotonic()
    with httpx.Client(timeout=5) as client:
        while True:
            got = chat(client, dataplane, secret).status_code
            elapsed = time.monotonic() - start
            if got == status:
                return elapsed
            assert elapsed < PROPAGATION_DEADLINE, f"still {got} after {elapsed:.2f}s, wanted {status}"
            time.sleep(0.02)


def stored_events(cp: ControlPlane) -> list[tuple[str, str]]:
    """(request_id, user_id) of every usage row in the control plane's database."""
    with sqlite3.connect(f"file:{cp.db_path}?mode=ro", uri=True, timeout=5) as db:
        return list(db.execute("SELECT request_id, user_id FROM usage_events"))


def test_api_changes_reach_the_dataplane_within_a_second(
    world: World, mock: MockProvider, start_dataplane: StartDataplane, controlplane: ControlPlane, tmp_path: Path
) -> None:
    dataplane = start_dataplane(dataplane_config(world, controlplane, tmp_path / "dp"))
    tenant = provision(controlplane, world, mock)

    took = wait_for_status(dataplane, tenant.secret, 200)
    assert took < PROPAGATION_DEADLINE

    request_ids = []
    with httpx.Client(timeout=10) as client:
        for stream in (False, True, False, True):
            response = chat(client, dataplane, tenant.secret, stream=stream)
            assert response.status_code == 200, response.text
            request_ids.append(response.headers["x-request-id"])

    controlplane.api("POST", f"/keys/{tenant.key_id}/revoke", expect=200)
    took = wait_for_status(dataplane, tenant.secret, 401)
    assert took < PROPAGATION_DEADLINE

    # Every 200 (the first probe included) is one usage row with the tokens the data plane recorded.
    local = [e for e in dataplane.usage_events() if e["user_id"] == tenant.user_id and e["status"] == 200]
    assert set(request_ids) <= {e["request_id"] for e in local}
    expected = {
        "requests": len(local),
        "input_tokens": sum(e["input_tokens"] for e in local),
        "output_tokens": sum(e["output_tokens"] for e in local),
    }

    def report() -> dict[str, Any] | None:
        totals = controlplane.api("GET", f"/usage?user_id={tenant.user_id}", expect=200)["totals"]
        return totals if totals["requests"] == expected["requests"] else None

    totals = wait_until(report, "usage rows in the control plane", timeout=10)
    assert {k: totals[k] for k in expected} == expected
    # Exact: $1 and $2 per million tokens, summed from the costs fixed at ingest.
    cost = Decimal(expected["input_tokens"] + 2 * expected["output_tokens"]) / 1_000_000
    assert Decimal(totals["cost_usd"]) == cost
    assert dataplane.metric_value("molt_control_plane_snapshot_version") > 0
    assert dataplane.metric_value("molt_config_reload_failures_total") == 0


def test_plan_limits_reach_the_dataplane_within_a_second(
    world: World, mock: MockProvider, start_dataplane: StartDataplane, controlplane: ControlPlane, tmp_path: Path
) -> None:
    dataplane = start_dataplane(dataplane_config(world, controlplane, tmp_path / "dp"))
    plan = controlplane.api("POST", "/plans", {"name": "starter", "limits": {"requests_per_minute": 2}}, expect=201)
    assert plan["limits"] == {"requests_per_minute": 2}
    tenant = provision(controlplane, world, mock, plan="starter")

    # The user is on the plan before their key exists, so the key goes live with the plan's limit: the first 200
    # is the first of the two requests a minute.
    took = wait_for_status(dataplane, tenant.secret, 200)
    assert took < PROPAGATION_DEADLINE
    with httpx.Client(timeout=5) as client:
        second = chat(client, dataplane, tenant.secret)
        assert second.status_code == 200, second.text
        assert second.headers["x-ratelimit-limit-requests"] == "2"
        assert second.headers["x-ratelimit-remaining-requests"] == "0"
        third = chat(client, dataplane, tenant.secret)
    assert third.status_code == 429, third.text
    assert third.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(third.headers["retry-after"]) >= 1
    assert third.headers["x-ratelimit-limit-requests"] == "2"
    assert third.headers["x-ratelimit-remaining-requests"] == "0"

    # Raising the plan's limit lifts it within a second, for every user on the plan.
    controlplane.api("PATCH", "/plans/starter", {"limits": {"requests_per_minute": 100}}, expect=200)
    took = wait_for_status(dataplane, tenant.secret, 200)
    assert took < PROPAGATION_DEADLINE
    with httpx.Client(timeout=5) as client:
        lifted = chat(client, dataplane, tenant.secret)
    assert lifted.status_code == 200, lifted.text
    assert lifted.headers["x-ratelimit-limit-requests"] == "100"

    # The plan cannot go while the user is on it.
    refused = controlplane.api("DELETE", "/plans/starter", expect=409)
    assert "in use" in refused["error"]["message"]


@dataclass
class Load:
    """A few client threads sending chat requests until stopped; remembers every 200."""

    dataplane: Dataplane
    secret: str
    completed: dict[str, float] = field(default_factory=dict)  # request id -> monotonic time the client had it all
    failures: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self, threads: int = 3) -> None:
        for i in range(threads):
            thread = threading.Thread(target=self._run, args=(i % 2 == 1,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _run(self, stream: bool) -> None:
        while not self._stop.is_set():
            try:
                with httpx.Client(timeout=5) as client:
                    while not self._stop.is_set():
                        response = chat(client, self.dataplane, self.secret, stream=stream)
                        done = time.monotonic()
                        with self._lock:
                            if response.status_code == 200:
                                self.completed[response.headers["x-request-id"]] = done
                            else:
                                self.failures += 1
            except httpx.HTTPError:
                # The data plane is down (killed): count it and retry once it is back.
                with self._lock:
                    self.failures += 1
                time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)


def test_no_usage_lost_or_duplicated_when_either_side_is_killed(
    world: World, mock: MockProvider, start_dataplane: StartDataplane, controlplane: ControlPlane, tmp_path: Path
) -> None:
    config = dataplane_config(world, controlplane, tmp_path / "dp", ship_interval="300ms")
    dataplane = start_dataplane(config)
    tenant = provision(controlplane, world, mock)
    wait_for_status(dataplane, tenant.secret, 200)

    load = Load(dataplane, tenant.secret)
    load.start()
    time.sleep(1.5)

    # SIGKILL the data plane under load (the spool holds events not yet shipped), then restart it on the same
    # spool. Clients keep going and retry on connection errors.
    before_kill = len(load.completed)
    dataplane.kill()
    killed_at = time.monotonic()
    dataplane = start_dataplane(config)
    load.dataplane = dataplane
    time.sleep(1.5)

    # SIGKILL the control plane; the data plane keeps serving its last snapshot and spooling usage.
    controlplane.process.kill()
    during_outage = len(load.completed)
    time.sleep(1.5)
    assert len(load.completed) > during_outage, "the data plane stopped serving while the control plane was down"
    controlplane.start()
    time.sleep(1.5)
    load.stop()
    assert before_kill > 0 and len(load.completed) > before_kill

    # Everything recorded gets shipped: the spool drains, the database holds each event once.
    wait_until(
        lambda: dataplane.metric_value("molt_usage_spool_bytes") == 0
        and dataplane.metric_value("molt_usage_spool_recorded_total") > 0,
        "the spool to drain",
        timeout=20,
    )
    rows = [request_id for request_id, user in stored_events(controlplane) if user == tenant.user_id]
    stored = set(rows)
    assert len(rows) == len(stored), "a usage event was stored twice"
    ok = set(load.completed)

    # The data plane holds the end of each response until its usage event is fsynced (see
    # dataplane/src/spool/), so every response a client saw complete has its row, even those that ended a
    # moment before the SIGKILL.
    missing = ok - stored
    assert not missing, f"{len(missing)} completed requests have no usage row: {sorted(missing)[:5]}"
    just_before = [r for r in ok if killed_at - 0.25 <= load.completed[r] <= killed_at]
    print(f"{len(ok)} completed, {len(just_before)} in the 250 ms before the data plane's SIGKILL, all stored")
    extra = stored - ok
    # The wait_for_status probe is a 200 the load did not record; beyond it, only a request in flight at the
    # SIGKILL (one per load thread) may be recorded while its client saw the connection drop.
    assert len(extra) <= 1 + 3, f"usage rows for requests the client never completed: {extra}"

    totals = controlplane.api("GET", f"/usage?user_id={tenant.user_id}", expect=200)["totals"]
    assert totals["requests"] == len(stored)
