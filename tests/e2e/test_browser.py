"""A browser app on its own origin, in a real headless Chromium (Debian's `chromium`, driven over the DevTools
protocol with `websockets`): it fetches a WebSocket ticket cross-origin (a CORS preflight), chats with its bot
over the ticket, has a reused ticket and a wrong key refused, and authenticates with the subprotocol without the
key ever being echoed back. A page on an origin the data plane does not allow gets neither a ticket nor a socket.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect

from harness import Dataplane, DataplaneFleet, World, wait_until
from test_websocket import OWNER, MockBot, bot, ws_config  # noqa: F401 - `bot` is the module fixture

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>molt browser app</title></head>
<body>
<script>
function socket(url, protocols) {
  return new Promise((resolve) => {
    const ws = protocols ? new WebSocket(url, protocols) : new WebSocket(url);
    const frames = [];
    let opened = false;
    ws.onopen = () => { opened = true; ws.send(JSON.stringify({type: "message", content: "from the browser"})); };
    ws.onmessage = (m) => {
      const f = JSON.parse(m.data);
      frames.push(f);
      if (f.done === true) { ws.close(1000); }
    };
    ws.onclose = (e) => resolve({opened, protocol: ws.protocol, code: e.code, frames});
    setTimeout(() => { try { ws.close(); } catch (e) {} resolve({opened, timeout: true, frames}); }, 8000);
  });
}
async function ticket(dp, key) {
  try {
    const r = await fetch(dp + "/v1/ws/tickets", {method: "POST", headers: {"authorization": "Bearer " + key}});
    return {status: r.status, body: await r.json(), requestId: r.headers.get("x-request-id")};
  } catch (e) {
    return {error: String(e)};
  }
}
window.runChecks = async (cfg) => {
  const out = {};
  out.ticket = await ticket(cfg.dp, cfg.key);
  if (out.ticket.body && out.ticket.body.ticket) {
    const t = out.ticket.body.ticket;
    out.chat = await socket(cfg.ws + "?bot=bot-1&ticket=" + encodeURIComponent(t));
    out.reused = await socket(cfg.ws + "?bot=bot-1&ticket=" + encodeURIComponent(t));
  }
  out.wrongKey = await ticket(cfg.dp, "molt_sk_not_a_key");
  out.subprotocol = await socket(cfg.ws + "?bot=bot-1", ["molt", "molt-key." + cfg.key]);
  return out;
};
</script>
</body></html>
"""


class PageServer:
    """Serves the app page from a directory on its own port: its own origin."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        (root / "index.html").write_text(PAGE)
        handler = partial(SimpleHTTPRequestHandler, directory=str(root))
        handler.log_message = lambda *_: None  # type: ignore[method-assign]
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


class Chromium:
    """Headless Chromium with the DevTools protocol; `run(url, expression)` evaluates in a fresh tab."""

    def __init__(self, profile: Path) -> None:
        if not Path(CHROMIUM).is_file():
            raise AssertionError("chromium is not installed; scripts/test installs Debian's `chromium`")
        profile.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(profile / "chromium.log").open("w"),
        )
        active = profile / "DevToolsActivePort"
        wait_until(active.is_file, "Chromium's DevTools port", timeout=30)
        port, path = wait_until(lambda: active.read_text().split(), "DevToolsActivePort to be written")[:2]
        self.stack = ExitStack()
        self.ws = self.stack.enter_context(connect(f"ws://127.0.0.1:{port}{path}", max_size=None))
        self.next_id = 0

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        while True:
            reply = json.loads(self.ws.recv(timeout=60))
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply["result"]

    def run(self, url: str, expression: str) -> Any:
        target = self.call("Target.createTarget", url=url)["targetId"]
        session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        deadline = time.monotonic() + 30
        while self.call("Runtime.evaluate", session, expression="typeof window.runChecks")["result"]["value"] != "function":
            assert time.monotonic() < deadline, f"{url} did not load"
            time.sleep(0.05)
        result = self.call("Runtime.evaluate", session, expression=expression, awaitPromise=True, returnByValue=True)
        self.call("Target.closeTarget", targetId=target)
        if "exceptionDetails" in result:
            raise AssertionError(f"the page threw: {result['exceptionDetails']}")
        return result["result"]["value"]

    def close(self) -> None:
        self.stack.close()
        self.process.kill()
        self.process.wait(10)


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PageServer, PageServer]]:
    root = tmp_path_factory.mktemp("pages")
    allowed, other = PageServer(root / "app"), PageServer(root / "other")
    try:
        yield allowed, other
    finally:
        allowed.close()
        other.close()


@pytest.fixture(scope="module")
def browser_dp(
    world: World, bot: MockBot, pages: tuple[PageServer, PageServer], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Dataplane]:
    root = tmp_path_factory.mktemp("browser-dataplane")
    config = ws_config(world, bot, root / "config", ticket_ttl="30s")
    config["browser"] = {"allowed_origins": [pages[0].origin]}
    fleet = DataplaneFleet(root)
    try:
        yield fleet.start(config)
    finally:
        fleet.shutdown()


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    c = Chromium(tmp_path_factory.mktemp("chromium"))
    try:
        yield c
    finally:
        c.close()


def checks(dp: Dataplane) -> str:
    cfg = {"dp": dp.url, "ws": dp.url.replace("http://", "ws://") + "/ws/chat", "key": OWNER.secret}
    return f"runChecks({json.dumps(cfg)})"


def test_a_page_on_an_allowed_origin_gets_a_ticket_and_chats_with_its_bot(
    browser_dp: Dataplane, pages: tuple[PageServer, PageServer], chromium: Chromium
) -> None:
    out = chromium.run(pages[0].origin + "/index.html", checks(browser_dp))

    assert out["ticket"]["status"] == 200, out["ticket"]
    assert out["ticket"]["requestId"], "x-request-id is exposed to the page"
    chat = out["chat"]
    assert chat["opened"] and chat["code"] == 1000, chat
    replies = [f["content"] for f in chat["frames"] if f.get("done") is True]
    assert replies == ["Hello from the Molt mock bot. You said: from the browser"], chat["frames"]

    assert out["reused"]["opened"] is False, "a ticket is single-use"
    assert out["wrongKey"]["status"] == 401, "the refusal is readable by the page"
    assert out["wrongKey"]["body"]["error"]["code"] == "invalid_api_key"

    sub = out["subprotocol"]
    assert sub["opened"] and sub["protocol"] == "molt", sub
    assert OWNER.secret not in json.dumps(sub), "the key is never echoed back"

    log = browser_dp.logs()
    assert '"route":"ws.tickets"' in log and '"route":"ws.chat"' in log, "WebSocket routes are named in the log"


def test_a_page_on_another_origin_gets_neither_a_ticket_nor_a_socket(
    browser_dp: Dataplane, pages: tuple[PageServer, PageServer], chromium: Chromium
) -> None:
    out = chromium.run(pages[1].origin + "/index.html", checks(browser_dp))

    assert "error" in out["ticket"], f"the preflight must fail for another origin: {out['ticket']}"
    assert "chat" not in out
    assert out["subprotocol"]["opened"] is False, "the upgrade from another origin is refused"
    log = browser_dp.logs()
    assert '"error":"origin_not_allowed"' in log
