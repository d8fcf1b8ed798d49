"""The WebSocket chat router (`GET /ws/chat?bot=<id>`) with the real `websockets` client.

A mock bot gateway (`molt mock-bot`) stands in for the user's bot. Covered: header, subprotocol and
ticket auth; the bot sees its gateway token and never the molt key; replies and brain events arrive in
order; HTTP errors before the upgrade (401, 404, 429, 502); close codes after it (1009, 1011, 1012,
1014, 1001); a client that stops reading keeps the data plane's memory bounded.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from harness import (
    MOLT_BIN,
    ClientKey,
    Dataplane,
    DataplaneFleet,
    StartDataplane,
    World,
    chat_once,
    get_ok,
    new_client_key,
    new_secret,
    refused_port,
    require_binary,
    start_server,
)

MOCK_REPLY = "Hello from the Molt mock bot. You said: "


class MockBot:
    """A `molt mock-bot` process with its handshake record."""

    def __init__(self, log_dir: Path) -> None:
        self.token = new_secret("gw-token-")
        self.process, listeners = start_server(
            [require_binary(MOLT_BIN, "molt binary"), "mock-bot", "--listen", "127.0.0.1:0", "--token", self.token],
            log_dir / "mock_bot.log",
            "mock bot",
        )
        self.port = int(listeners["http"].rsplit(":", 1)[1])
        self.url = f"http://{listeners['http']}"

    def handshakes(self) -> list[dict[str, Any]]:
        return get_ok(f"{self.url}/_mock/connections").json()

    def clear(self) -> None:
        httpx.delete(f"{self.url}/_mock/connections", timeout=5).raise_for_status()


@pytest.fixture(scope="module")
def bot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MockBot]:
    b = MockBot(tmp_path_factory.mktemp("mock-bot"))
    try:
        yield b
    finally:
        b.process.kill()


OWNER = new_client_key("k-ws-owner", "user-ws-owner")
OTHER = new_client_key("k-ws-other", "user-ws-other")


def ws_config(world: World, bot: MockBot, workdir: Path, **websocket: Any) -> dict[str, Any]:
    config = world.config(workdir, keys=[OWNER, OTHER], tls=False)
    config["bots"] = [
        {"id": "bot-1", "user": OWNER.user, "gateway_url": f"ws://127.0.0.1:{bot.port}/ws", "gateway_token": bot.token},
        {"id": "bot-other", "user": OTHER.user, "gateway_url": f"ws://127.0.0.1:{bot.port}/", "gateway_token": bot.token},
        {
            "id": "bot-dead",
            "user": OWNER.user,
            "gateway_url": f"ws://127.0.0.1:{refused_port()}/",
            "gateway_token": bot.token,
        },
    ]
    config["websocket"] = {"max_message_bytes": 65536, "ticket_ttl": "2s", **websocket}
    return config


@pytest.fixture(scope="module")
def dp(world: World, bot: MockBot, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dataplane]:
    root = tmp_path_factory.mktemp("ws-dataplane")
    fleet = DataplaneFleet(root)
    try:
        yield fleet.start(ws_config(world, bot, root / "config"))
    finally:
        fleet.shutdown()


def ws_url(dataplane: Dataplane, bot_id: str = "bot-1", **query: str) -> str:
    q = "&".join(f"{k}={v}" for k, v in {"bot": bot_id, **query}.items())
    return f"{dataplane.url.replace('http://', 'ws://')}/ws/chat?{q}"


def bearer(key: ClientKey) -> dict[str, str]:
    return {"Authorization": f"Bearer {key.secret}"}


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def assert_seed_reply(frames: list[dict[str, Any]], said: str) -> None:
    """Brain events and chunks in the mock's order, chunks adding up to the final content."""
    kinds = [f["event"]["type"] if f.get("type") == "brain_event" else "chunk" for f in frames]
    assert kinds == ["thinking", "chunk", "tool_call", "chunk", "chunk", "chunk", "tool_result", "chunk"], kinds
    chunks = [f["content"] for f in frames if "content" in f and f.get("type") != "brain_event"]
    assert "".join(chunks[:-1]) == chunks[-1] == MOCK_REPLY + said
    assert frames[-1]["done"] is True
    ids = [f["event"]["id"] for f in frames if f.get("type") == "brain_event"]
    assert len(set(ids)) == 3


def status_of(exc: InvalidStatus) -> tuple[int, dict[str, Any]]:
    response = exc.response
    return response.status_code, json.loads(response.body or b"{}")


def assert_refused(url: str, status: int, code: str, **kwargs: Any) -> None:
    async def go() -> None:
        async with websockets.connect(url, open_timeout=10, **kwargs):
            pass

    with pytest.raises(InvalidStatus) as info:
        run(go())
    got, body = status_of(info.value)
    assert got == status, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["type"]


def close_code(exc: ConnectionClosed) -> int | None:
    return exc.rcvd.code if exc.rcvd else None


async def next_close(ws: Any) -> int | None:
    """Wait (10 s) for the next frame: the close code if the connection closes instead, else None."""
    try:
        await asyncio.wait_for(ws.recv(), 10)
    except ConnectionClosed as e:
        return close_code(e)
    return None


# ------------------------------------------------------------------------------------------------
# Auth: header, subprotocol, ticket
# ------------------------------------------------------------------------------------------------


def test_chat_with_header_auth(dp: Dataplane, bot: MockBot) -> None:
    bot.clear()

    async def go() -> tuple[list[dict[str, Any]], list[dict[str, Any]], str | None]:
        async with websockets.connect(ws_url(dp), additional_headers=bearer(OWNER)) as ws:
            request_id = ws.response.headers.get("x-request-id")
            first = await chat_once(ws, "hello")
            second = await chat_once(ws, "again")
            return first, second, request_id

    first, second, request_id = run(go())
    assert_seed_reply(first, "hello")
    assert_seed_reply(second, "again")
    [seen] = bot.handshakes()
    assert seen["authorized"] is True
    assert seen["headers"]["authorization"] == f"Bearer {bot.token}"
    assert seen["path"] == "/ws"
    assert OWNER.secret not in json.dumps(seen), "the molt key reached the bot"
    assert request_id and seen["headers"].get("x-request-id") == request_id

    event = dp.usage_event(request_id)
    # One ledger for every route: `provider` is a model provider (none answers a bot chat), `bot_id` the bot.
    assert (event["route"], event["user_id"], event["key_id"], event["provider"], event["bot_id"]) == (
        "ws.chat",
        OWNER.user,
        OWNER.id,
        "",
        "bot-1",
    )
    assert event["status"] == 101 and event["outcome"] == "ok"
    metrics = dp.metrics()
    assert 'molt_ws_brain_events_total{type="tool_call"}' in metrics
    assert dp.metric_value("molt_ws_messages_total") >= 18


def test_chat_with_subprotocol_auth(dp: Dataplane, bot: MockBot) -> None:
    bot.clear()

    async def go() -> tuple[str | None, list[dict[str, Any]], str]:
        async with websockets.connect(ws_url(dp), subprotocols=["molt", f"molt-key.{OWNER.secret}"]) as ws:
            header = ws.response.headers.get("sec-websocket-protocol", "")
            return ws.subprotocol, await chat_once(ws), header

    chosen, frames, header = run(go())
    assert chosen == "molt"
    assert header == "molt", "the server must echo the non-secret protocol, never the key"
    assert_seed_reply(frames, "hi")
    [seen] = bot.handshakes()
    assert OWNER.secret not in json.dumps(seen)
    assert "sec-websocket-protocol" not in seen["headers"]


def issue_ticket(dp: Dataplane, key: ClientKey) -> dict[str, Any]:
    response = httpx.post(f"{dp.url}/v1/ws/tickets", headers=bearer(key), timeout=10)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["expires_at"] > time.time()
    return body


def test_chat_with_ticket_auth_single_use(dp: Dataplane, bot: MockBot) -> None:
    ticket = issue_ticket(dp, OWNER)["ticket"]
    assert OWNER.secret not in ticket

    async def go() -> list[dict[str, Any]]:
        async with websockets.connect(ws_url(dp, ticket=ticket)) as ws:
            return await chat_once(ws)

    assert_seed_reply(run(go()), "hi")
    assert_refused(ws_url(dp, ticket=ticket), 401, "ticket_already_used")


def test_ticket_expires(dp: Dataplane) -> None:
    ticket = issue_ticket(dp, OWNER)["ticket"]
    time.sleep(2.2)  # ticket_ttl = 2s in this module's config
    assert_refused(ws_url(dp, ticket=ticket), 401, "expired_ticket")


def test_ticket_issuer_needs_auth(dp: Dataplane) -> None:
    response = httpx.post(f"{dp.url}/v1/ws/tickets", timeout=10)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "missing_api_key"
    assert_refused(ws_url(dp, ticket="forged.ticket"), 401, "invalid_ticket")


# ------------------------------------------------------------------------------------------------
# Refusals before the upgrade
# ------------------------------------------------------------------------------------------------


def test_no_auth_is_401(dp: Dataplane) -> None:
    assert_refused(ws_url(dp), 401, "missing_api_key")
    assert_refused(ws_url(dp), 401, "invalid_api_key", additional_headers={"Authorization": "Bearer molt_sk_nope"})


def test_someone_elses_bot_and_unknown_bot_look_the_same(dp: Dataplane, bot: MockBot) -> None:
    bot.clear()
    assert_refused(ws_url(dp, "bot-other"), 404, "bot_not_found", additional_headers=bearer(OWNER))
    assert_refused(ws_url(dp, "no-such-bot"), 404, "bot_not_found", additional_headers=bearer(OWNER))
    assert bot.handshakes() == [], "nothing may reach a bot for a refused request"


def test_unreachable_bot_is_502_before_upgrade(dp: Dataplane) -> None:
    assert_refused(ws_url(dp, "bot-dead"), 502, "bot_unreachable", additional_headers=bearer(OWNER))


def test_connection_cap_per_user(world: World, bot: MockBot, start_dataplane: StartDataplane, tmp_path: Path) -> None:
    dataplane = start_dataplane(ws_config(world, bot, tmp_path / "cfg", max_connections_per_user=2))

    async def go() -> None:
        async with websockets.connect(ws_url(dataplane), additional_headers=bearer(OWNER)):
            async with websockets.connect(ws_url(dataplane), additional_headers=bearer(OWNER)):
                with pytest.raises(InvalidStatus) as info:
                    async with websockets.connect(ws_url(dataplane), additional_headers=bearer(OWNER)):
                        pass
                assert info.value.response.status_code == 429
                assert info.value.response.headers.get("retry-after")
        # Slots free up when connections close.
        await asyncio.sleep(0.2)
        async with websockets.connect(ws_url(dataplane), additional_headers=bearer(OWNER)) as ws:
            await chat_once(ws)

    run(go())


# ------------------------------------------------------------------------------------------------
# Close codes after the upgrade
# ------------------------------------------------------------------------------------------------


def test_oversized_message_closes_1009(dp: Dataplane) -> None:
    async def go() -> int | None:
        async with websockets.connect(ws_url(dp), additional_headers=bearer(OWNER), max_size=None) as ws:
            await ws.send("x" * 70_000)  # max_message_bytes = 65536
            return await next_close(ws)

    assert run(go()) == 1009


def test_bot_failure_codes_reach_the_client(dp: Dataplane) -> None:
    async def closes_with(command: dict[str, Any]) -> int | None:
        async with websockets.connect(ws_url(dp), additional_headers=bearer(OWNER)) as ws:
            await ws.send(json.dumps(command))
            return await next_close(ws)

    assert run(closes_with({"type": "close", "code": 1011})) == 1011
    assert run(closes_with({"type": "drop"})) == 1014


def test_reload_moving_a_bot_closes_only_its_connections(
    world: World, bot: MockBot, start_dataplane: StartDataplane, tmp_path: Path
) -> None:
    config = ws_config(world, bot, tmp_path / "cfg")
    config["bots"].append(
        {"id": "bot-2", "user": OWNER.user, "gateway_url": f"ws://127.0.0.1:{bot.port}/two", "gateway_token": bot.token}
    )
    dataplane = start_dataplane(config)

    async def go() -> tuple[int | None, list[dict[str, Any]]]:
        async with websockets.connect(ws_url(dataplane, "bot-1"), additional_headers=bearer(OWNER)) as moved:
            async with websockets.connect(ws_url(dataplane, "bot-2"), additional_headers=bearer(OWNER)) as kept:
                new = copy.deepcopy(config)
                new["bots"][0]["gateway_url"] = f"ws://127.0.0.1:{bot.port}/moved"
                dataplane.reload(new)
                return await next_close(moved), await chat_once(kept)

    bot.clear()
    code, frames = run(go())
    assert code == 1012
    assert_seed_reply(frames, "hi")

    async def reconnect() -> None:
        async with websockets.connect(ws_url(dataplane, "bot-1"), additional_headers=bearer(OWNER)) as ws:
            await chat_once(ws)

    run(reconnect())
    assert bot.handshakes()[-1]["path"] == "/moved"


@pytest.mark.slow
def test_shutdown_closes_1001(world: World, bot: MockBot, start_dataplane: StartDataplane, tmp_path: Path) -> None:
    dataplane = start_dataplane(ws_config(world, bot, tmp_path / "cfg"))

    async def go() -> int | None:
        async with websockets.connect(ws_url(dataplane), additional_headers=bearer(OWNER)) as ws:
            await chat_once(ws)
            dataplane.stop()
            return await next_close(ws)

    assert run(go()) == 1001
    assert dataplane.wait_exit(15) == 0


# ------------------------------------------------------------------------------------------------
# Backpressure: a client that stops reading
# ------------------------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def settled_rss_kib(pid: int) -> int:
    """RSS once start-up work (the tokenizer warms up in the background) has stopped growing it."""
    last = rss_kib(pid)
    for _ in range(60):
        time.sleep(0.5)
        now = rss_kib(pid)
        if abs(now - last) < 512:
            return now
        last = now
    return last


@pytest.mark.slow
def test_slow_reader_keeps_memory_bounded(dp: Dataplane) -> None:
    flood_bytes = 64 * 1024
    count = 4000  # 256 MiB offered by the bot

    async def go() -> tuple[int, int, int]:
        # max_queue=1: once one message is queued the client stops reading its socket.
        async with websockets.connect(
            ws_url(dp), additional_headers=bearer(OWNER), max_queue=1, max_size=None
        ) as ws:
            before = settled_rss_kib(dp.process.pid)
            bytes_before = dp.metric_value("molt_ws_message_bytes_total")
            await ws.send(json.dumps({"type": "flood", "count": count, "size": flood_bytes}))
            peak = before
            for _ in range(30):  # 3 s of the bot pushing as hard as it can
                await asyncio.sleep(0.1)
                peak = max(peak, rss_kib(dp.process.pid))
            sent = int(dp.metric_value("molt_ws_message_bytes_total") - bytes_before)
            return before, peak, sent

    before, peak, relayed = run(go())
    # The relay holds one message; the rest waits in socket buffers, i.e. in the kernel.
    assert peak - before < 16 * 1024, f"RSS grew by {(peak - before) // 1024} MiB while the client was not reading"
    assert relayed < count * flood_bytes // 4, "the bot was not held back"


def access_lines(dataplane: Dataplane, request_id: str) -> list[dict[str, Any]]:
    lines = []
    for line in dataplane.logs().splitlines():
        if request_id in line and line.lstrip().startswith("{"):
            record = json.loads(line)
            if record.get("target") == "access" and record.get("request_id") == request_id:
                lines.append(record)
    return lines


def test_one_access_line_per_connection_with_its_route_key_and_outcome(dp: Dataplane, bot: MockBot) -> None:
    served = f"ws-access-{time.monotonic_ns()}"

    async def chat() -> None:
        headers = {**bearer(OWNER), "x-request-id": served}
        async with websockets.connect(ws_url(dp), additional_headers=headers) as ws:
            await chat_once(ws, "log me")

    run(chat())
    wait_until_lines = time.monotonic() + 5
    while not access_lines(dp, served) and time.monotonic() < wait_until_lines:
        time.sleep(0.05)
    [line] = access_lines(dp, served)
    assert (line["route"], line["key_id"], line["bot"], line["outcome"], line["status"]) == (
        "ws.chat",
        OWNER.id,
        "bot-1",
        "ok",
        101,
    )
    assert line["client_messages"] >= 1 and line["upstream_messages"] >= 1

    refused = f"ws-refused-{time.monotonic_ns()}"
    assert_refused(ws_url(dp), 401, "missing_api_key", additional_headers={"x-request-id": refused})
    wait_until_lines = time.monotonic() + 5
    while not access_lines(dp, refused) and time.monotonic() < wait_until_lines:
        time.sleep(0.05)
    [line] = access_lines(dp, refused)
    assert (line["route"], line["status"], line["outcome"], line["error"]) == (
        "ws.chat",
        401,
        "rejected",
        "missing_api_key",
    )
    assert 'route="ws.chat"' in dp.metrics(), "the request metrics name the WebSocket route"
