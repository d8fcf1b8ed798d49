"""Every metric name a dashboard or alert rule uses exists in what molt exports, so a renamed metric breaks CI instead
of a dashboard. A live `molt dev` (data plane, and the control plane in-process with billing and a local fleet) is
driven through every path the rules and dashboards watch: chat (streamed and not), an upstream failure, a bot's
WebSocket, a signed Stripe webhook and a meter flush. Both /metrics pages are scraped and handed to
`deploy/validate.py metrics`, as deploy/check.sh would.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import shlex
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from conftest import DEPLOY, Process, copy_tree, edit, free_port, require_molt, run_validator, wait_until

PORTS = ("http", "tls", "admin", "mock", "controlplane", "stripe")


class Dev:
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / ".molt"
        argv: list[str | Path] = [require_molt(), "dev", "--dir", self.dir]
        for name in PORTS:
            argv += [f"--{name}", f"127.0.0.1:{free_port()}"]
        self.process = Process(argv, workdir / "dev.log", env={"OPENAI_API_KEY": "", "ANTHROPIC_API_KEY": ""})
        wait_until(self._started, "molt dev's dev.env", timeout=90)
        self.env = {}
        for line in (self.dir / "dev.env").read_text().splitlines():
            if line.startswith("export MOLT_"):
                name, value = shlex.split(line)[1].split("=", 1)
                self.env[name] = value
        self.admin = {"authorization": f"Bearer {self.env['MOLT_ADMIN_TOKEN']}"}
        self.client = {"authorization": f"Bearer {self.env['MOLT_API_KEY']}"}

    def _started(self) -> bool:
        if not self.process.alive():
            raise AssertionError(f"molt dev exited:\n{self.process.logs()[-3000:]}")
        return "Operate it:" in self.process.logs() and (self.dir / "dev.env").is_file()

    def api(self, method: str, path: str, body: Any = None) -> Any:
        response = httpx.request(
            method, f"{self.env['MOLT_ADMIN_URL']}/api/v1{path}", json=body, headers=self.admin, timeout=10
        )
        assert response.status_code < 300, f"{method} {path}: {response.status_code} {response.text}"
        return response.json()

    def chat(self, stream: bool, **headers: str) -> httpx.Response:
        body = {"model": "gpt-4o-mini", "stream": stream, "messages": [{"role": "user", "content": "Hello"}]}
        return httpx.post(
            f"{self.env['MOLT_URL']}/chat/completions", json=body, headers={**self.client, **headers}, timeout=10
        )


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    running = Dev(tmp_path_factory.mktemp("molt-dev"))
    try:
        yield running
    finally:
        running.process.kill()


def metric_names(url: str) -> set[str]:
    response = httpx.get(url, timeout=5)
    response.raise_for_status()
    return {
        line.split("{")[0].split(" ")[0] for line in response.text.splitlines() if line and not line.startswith("#")
    }


def drive_every_watched_path(dev: Dev) -> None:
    def serving() -> bool:
        try:
            return dev.chat(False).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(serving, "molt dev to serve chat", timeout=30)
    assert dev.chat(True).status_code == 200
    # An upstream failure (the mock answers 500 when asked to).
    assert dev.chat(False, **{"x-mock-status": "500"}).status_code >= 500

    # A bot on the local fleet, and a chat over its WebSocket through the data plane.
    users = dev.api("GET", "/users")["items"]
    user = next(u for u in users if u["email"] == "dev@molt.local")
    bot = dev.api("POST", "/bots", {"user_id": user["id"]})
    wait_until(lambda: dev.api("GET", f"/bots/{bot['id']}")["status"] == "running", "the bot to run", timeout=60)
    ws_url = dev.env["MOLT_URL"].replace("http://", "ws://").removesuffix("/v1") + f"/ws/chat?bot={bot['id']}"

    async def converse() -> list[dict[str, Any]]:
        async with websockets.connect(ws_url, additional_headers=dev.client, open_timeout=5) as ws:
            await ws.send(json.dumps({"type": "message", "content": "hi"}))
            frames = []
            while not frames or frames[-1].get("done") is not True:
                frames.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
            return frames

    def chatted() -> bool:
        try:
            return bool(asyncio.run(converse()))
        except (OSError, websockets.exceptions.WebSocketException):
            return False  # the snapshot carrying the bot has not reached the data plane yet

    wait_until(chatted, "a chat with the bot over /ws/chat", timeout=30, interval=0.5)

    # A signed Stripe webhook, as Stripe signs it.
    invoice = {"id": "in_metrics", "object": "invoice", "customer": "cus_molt_dev"}
    event = {"id": "evt_metrics", "object": "event", "type": "invoice.paid", "created": int(time.time())}
    body = json.dumps({**event, "data": {"object": invoice}})
    t = int(time.time())
    sig = hmac.new(dev.env["MOLT_STRIPE_WEBHOOK_SECRET"].encode(), f"{t}.{body}".encode(), hashlib.sha256).hexdigest()
    response = httpx.post(
        f"{dev.env['MOLT_ADMIN_URL']}/webhooks/stripe", content=body, headers={"stripe-signature": f"t={t},v1={sig}"}
    )
    assert response.status_code == 200, response.text

    # Meter events reach the fake Stripe once the 10 s window closes, and the periodic flush job has run.
    def flushed() -> bool:
        httpx.post(
            f"{dev.env['MOLT_ADMIN_URL']}/api/v1/billing/flush", headers=dev.admin, timeout=10
        ).raise_for_status()
        names = metric_names(f"{dev.env['MOLT_ADMIN_URL']}/metrics")
        return {"molt_cp_billing_meter_events_total", "molt_cp_job_runs_total"} <= names

    wait_until(flushed, "a meter event sent and a periodic flush run", timeout=60, interval=1)


@pytest.fixture(scope="module")
def exported(dev: Dev, tmp_path_factory: pytest.TempPathFactory) -> Path:
    drive_every_watched_path(dev)
    names = metric_names(dev.env["MOLT_METRICS_URL"]) | metric_names(f"{dev.env['MOLT_ADMIN_URL']}/metrics")
    path = tmp_path_factory.mktemp("metrics") / "exported.txt"
    path.write_text("\n".join(sorted(names)) + "\n")
    return path


def test_every_metric_a_rule_or_dashboard_uses_is_exported(exported: Path) -> None:
    done = run_validator("metrics", "--exported", exported)
    assert done.returncode == 0, f"{done.stdout}{done.stderr}\nexported:\n{exported.read_text()}"
    assert "all exported or recorded" in done.stdout


def test_a_renamed_metric_in_a_dashboard_fails(exported: Path, tmp_path: Path) -> None:
    copy = copy_tree(DEPLOY / "monitoring", tmp_path / "monitoring")
    edit(
        copy / "dashboards" / "molt-dataplane.json",
        '"expr": "sum(molt_active_streams{',
        '"expr": "sum(molt_streams_active{',
    )
    done = run_validator("metrics", "--exported", exported, "--dir", copy)
    assert done.returncode != 0
    assert "molt_streams_active: used by molt-dataplane.json panel 'Active streams'" in done.stderr, done.stderr


def test_a_renamed_metric_in_an_alert_fails(exported: Path, tmp_path: Path) -> None:
    copy = copy_tree(DEPLOY / "monitoring", tmp_path / "monitoring")
    edit(copy / "rules" / "molt-alerts.yaml", "expr: molt_limits_redis_fallback == 1", "expr: molt_redis_fallback == 1")
    done = run_validator("metrics", "--exported", exported, "--dir", copy)
    assert done.returncode != 0
    assert "molt_redis_fallback: used by molt-alerts.yaml MoltLimitsRedisUnreachable" in done.stderr, done.stderr
