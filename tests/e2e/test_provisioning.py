"""Bot provisioning end to end: `POST /api/v1/bots` on a control plane whose `[fleet]` is the fake Fly Machines
API (`molt fake-fly`, a separate process) → volume and machine created, `/status` healthy → `running` → the bot
reaches the data plane in its config snapshot → a client chats with it through `/ws/chat?bot=` with its molt key.

And the crash test: the real control plane process is `kill -9`ed at every step boundary of provisioning (with
Fly's answer held back by the fake, so Fly has acted but the control plane has not recorded it) and restarted on
the same database; the bot still ends `running` with exactly one volume and one machine.

The fake Fly runs each started machine's mock bot on the machine's `private_ip` (a 127.x.y.z loopback address)
and internal port 18789, demanding the machine's `MOLT_GATEWAY_TOKEN`; the fleet's `gateway_url` template
`http://{private_ip}:18789/` makes that the address the data plane dials, as `{id}.vm.{app}.internal` would on Fly.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from harness import (
    CONTROLPLANE_TOKEN_ENV,
    SECRETS,
    ControlPlane,
    FakeFly,
    StartDataplane,
    World,
    assert_no_secrets,
    chat_once,
    refused_port,
    serve_controlplane,
    wait_until,
)

FLY_TOKEN_ENV = "MOLT_E2E_FLY_TOKEN"
FLY_APP = "molt-e2e-bots"
MOCK_REPLY = "Hello from the Molt mock bot. You said: "
RUNNING_DEADLINE = 30.0
ROUTE_DEADLINE = 10.0


@pytest.fixture
def fake_fly(tmp_path: Path) -> Iterator[FakeFly]:
    fly = FakeFly(tmp_path)
    try:
        yield fly
    finally:
        fly.process.kill()


@pytest.fixture
def controlplane(
    tmp_path: Path, fake_fly: FakeFly, world: World, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ControlPlane]:
    # The bots' PROXY_URL is handed to Fly and never called by the mock bots; the data plane listens on port 0.
    proxy_port = refused_port()
    fleet = {
        "kind": "fly",
        "api_url": fake_fly.url,
        "app": FLY_APP,
        "token_env": FLY_TOKEN_ENV,
        "image": "registry.fly.io/molt-bot:e2e",
        "region": "iad",
        "gateway_url": "http://{private_ip}:18789/",
        "proxy_url": f"http://127.0.0.1:{proxy_port}/v1",
        "health_deadline": "20s",
        "poll_interval": "100ms",
        "step_timeout": "5s",
        "backoff": "100ms",
    }
    cp = ControlPlane(
        tmp_path / "controlplane",
        poll_hold="5s",
        extra_config={"fleet": fleet},
        extra_env={FLY_TOKEN_ENV: fake_fly.token},
    )
    monkeypatch.setenv(CONTROLPLANE_TOKEN_ENV, cp.dataplane_token)
    yield from serve_controlplane(cp)


def ws_url(dataplane_url: str, bot_id: str) -> str:
    return f"{dataplane_url.replace('http://', 'ws://')}/ws/chat?bot={bot_id}"


def handshake_status(url: str, secret: str) -> int:
    """101 if the data plane upgrades the chat socket, else the HTTP status it refused with."""

    async def go() -> int:
        try:
            async with websockets.connect(url, open_timeout=5, additional_headers={"Authorization": f"Bearer {secret}"}):
                return 101
        except InvalidStatus as e:
            return e.response.status_code

    return asyncio.run(go())


def test_post_bot_on_fake_fly_then_chat_through_the_dataplane(
    world: World, start_dataplane: StartDataplane, controlplane: ControlPlane, fake_fly: FakeFly, tmp_path: Path
) -> None:
    config = world.config(tmp_path / "dp", tls=False)
    for section in ("keys", "providers", "models", "auth"):
        config.pop(section)
    config["control_plane"] = controlplane.dataplane_section(tmp_path / "dp")
    dataplane = start_dataplane(config)

    user = controlplane.api("POST", "/users", {"email": f"bot-{uuid.uuid4().hex[:8]}@example.com"}, expect=201)
    key = controlplane.api("POST", "/keys", {"user_id": user["id"]}, expect=201)
    SECRETS.add(key["secret"])

    created = controlplane.api("POST", "/bots", {"user_id": user["id"]}, expect=202)
    bot_id = created["id"]
    assert created["status"] in ("requested", "volume_created", "machine_created", "waiting_health", "running")
    assert "gateway_token" not in json.dumps(created)

    def running() -> dict[str, Any] | None:
        bot = controlplane.api("GET", f"/bots/{bot_id}", expect=200)
        assert bot["status"] != "failed", bot
        return bot if bot["status"] == "running" else None

    bot = wait_until(running, f"bot {bot_id} running", timeout=RUNNING_DEADLINE, interval=0.1)
    assert bot["machine_id"] and bot["volume_id"], bot
    assert bot["gateway_url"].endswith(":18789/"), bot

    state = fake_fly.state()
    live = [m for m in state["machines"] if m["state"] != "destroyed"]
    assert [m["id"] for m in live] == [bot["machine_id"]]
    assert live[0]["state"] == "started"
    assert [v["id"] for v in state["volumes"]] == [bot["volume_id"]]

    # The data plane answers 404 until the snapshot carrying the bot (and the key) reaches it.
    url = ws_url(dataplane.url, bot_id)
    start = time.monotonic()
    while (got := handshake_status(url, key["secret"])) != 101:
        assert got in (401, 404), f"unexpected {got} before the bot was routed"
        assert time.monotonic() - start < ROUTE_DEADLINE, f"bot still {got} after {ROUTE_DEADLINE}s"
        time.sleep(0.1)

    async def converse() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {key['secret']}"}) as ws:
            return await chat_once(ws, "hello"), await chat_once(ws, "again")

    for frames, said in zip(asyncio.run(converse()), ("hello", "again"), strict=True):
        chunks = [f["content"] for f in frames if f.get("type") != "brain_event" and "content" in f]
        assert len(chunks) > 1, frames  # streamed, not one blob
        assert "".join(chunks[:-1]) == chunks[-1] == MOCK_REPLY + said
        assert frames[-1]["done"] is True

    # Another user's key is refused for this bot.
    other = controlplane.api("POST", "/users", {"email": f"other-{uuid.uuid4().hex[:8]}@example.com"}, expect=201)
    other_key = controlplane.api("POST", "/keys", {"user_id": other["id"]}, expect=201)
    SECRETS.add(other_key["secret"])
    wait_until(
        lambda: handshake_status(url, other_key["secret"]) not in (101, 401) or None,
        "the other user's key to be known and refused",
        timeout=ROUTE_DEADLINE,
        interval=0.1,
    )
    assert handshake_status(url, other_key["secret"]) in (403, 404)


# --------------------------------------------------------------------------------------------
# kill -9 at every step boundary
# --------------------------------------------------------------------------------------------

HOLD_MS = 4000
"""How long the fake holds back an answer: the window in which the control plane is killed."""
API = f"/v1/apps/{FLY_APP}"


def test_kill_9_at_every_provisioning_step_boundary_leaves_one_of_each(tmp_path: Path) -> None:
    fly = FakeFly(tmp_path, rate_limits=False)
    fleet = {
        "kind": "fly",
        "api_url": fly.url,
        "app": FLY_APP,
        "token_env": FLY_TOKEN_ENV,
        "image": "registry.fly.io/molt-bot:e2e",
        "region": "iad",
        "gateway_url": "http://{private_ip}:18789/",
        # No data plane runs here: the bots' PROXY_URL is never called.
        "proxy_url": f"http://127.0.0.1:{refused_port()}/v1",
        "health_deadline": "45s",
        "poll_interval": "100ms",
        "step_timeout": "2s",
        # A killed worker's claim is given up after this; the restarted one waits it out.
        "lease": "1s",
        "backoff": "100ms",
    }
    cp = ControlPlane(tmp_path / "controlplane", extra_config={"fleet": fleet}, extra_env={FLY_TOKEN_ENV: fly.token})
    try:
        _crash_at_every_boundary(cp, fly)
    finally:
        cp.kill()
        fly.process.kill()
        assert_no_secrets(cp.logs(), "control plane log")


def _crash_at_every_boundary(cp: ControlPlane, fly: FakeFly) -> None:
    user = cp.api("POST", "/users", {"email": f"crash-{uuid.uuid4().hex[:8]}@example.com"}, expect=201)

    def bot() -> dict[str, Any]:
        return cp.api("GET", f"/bots/{bot_id}", expect=200)

    def status() -> str:
        got = bot()
        assert got["status"] != "failed", got
        return got["status"]

    def kill_when(what: str, in_status: str, fly_did: Any) -> None:
        """Wait until Fly has acted (`fly_did()`) while the bot is still `in_status`, then kill -9."""
        wait_until(lambda: fly_did() and status() == in_status, what, timeout=15, interval=0.05)
        cp.process.send_signal(signal.SIGKILL)
        assert cp.process.wait(timeout=10) == -signal.SIGKILL
        cp.process.kill()  # only closes its log now

    def new_calls(since: int, needle: str) -> list[tuple[str, int]]:
        return [c for c in fly.calls()[since:] if needle in c[0]]

    def ours(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [i for i in items if i.get("name") == bot_name]

    # 1. `requested`, the volume lookup in flight: nothing made yet.
    fly.delay_next(f"GET {API}/volumes", HOLD_MS)
    bot_id = cp.api("POST", "/bots", {"user_id": user["id"]}, expect=202)["id"]
    bot_name = bot()["name"]
    kill_when("the volume lookup", "requested", lambda: new_calls(0, f"GET {API}/volumes"))
    assert fly.state() == {"machines": [], "volumes": []}

    # 2. `requested`, Fly made the volume but the answer never arrived.
    fly.delay_next(f"POST {API}/volumes", HOLD_MS)
    cp.start()
    kill_when("the volume to exist", "requested", lambda: ours(fly.state()["volumes"]))

    # 3. `volume_created`, Fly made the machine but the answer never arrived.
    mark = len(fly.calls())
    fly.delay_next(f"POST {API}/machines", HOLD_MS)
    cp.start()
    kill_when("the machine to exist", "volume_created", lambda: new_calls(mark, f"POST {API}/machines"))
    assert len(fly.machines_of_bot(FLY_APP, bot_id)) == 1

    # 4. `machine_created`, Fly answered the boot wait too late.
    mark = len(fly.calls())
    fly.delay_next("/wait", HOLD_MS)
    cp.start()
    kill_when("the boot wait", "machine_created", lambda: new_calls(mark, "/wait"))

    # 5. `waiting_health`, the bot not healthy yet.
    fly.set_bots_healthy(False)
    cp.start()
    kill_when("the health check", "waiting_health", lambda: True)
    fly.set_bots_healthy(True)

    # 6. `running`, then killed once more: a restart changes nothing.
    cp.start()
    kill_when("running", "running", lambda: True)
    cp.start()
    time.sleep(1.5)  # longer than the lease: a restarted worker would have acted by now

    final = bot()
    assert final["status"] == "running", final
    assert final["volume_id"] and final["machine_id"], final
    state = fly.state()
    # Everything Fly ever held (destroyed machines included) is this bot's one volume and one machine.
    assert [v["id"] for v in state["volumes"]] == [final["volume_id"]], state
    assert [(m["id"], m["state"]) for m in state["machines"]] == [(final["machine_id"], "started")], state
    assert [m["id"] for m in fly.machines_of_bot(FLY_APP, bot_id)] == [final["machine_id"]]
    # Each create reached Fly exactly once; every later attempt found what it had made.
    calls = fly.calls()
    assert [c for c in calls if c[0] == f"POST {API}/volumes"] == [(f"POST {API}/volumes", 200)], calls
    assert [c for c in calls if c[0] == f"POST {API}/machines"] == [(f"POST {API}/machines", 200)], calls
    # The bot answers on the address the control plane recorded.
    health = httpx.get(final["gateway_url"].rstrip("/") + "/status", timeout=5)
    assert health.status_code == 200, health.text

