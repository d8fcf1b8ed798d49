"""Notifications end to end, as a user meets them: a user signs up (Clerk's Svix-signed `user.created`), then a
signed Stripe `checkout.session.completed` naming their Clerk id makes
`molt controlplane` provision their bot on `molt fake-fly`; when the bot is running, the user is told exactly once
by email (delivered by the control plane's SMTP client to an aiosmtpd server in this test, parsed here: plain-text
and HTML parts), by one signed webhook to the operator's app (a receiver in this test that checks the Standard
Webhooks signature itself), and in-app (`GET /api/v1/users/{id}/notifications`).

And the crash test: the SMTP server and the app are down when the bot starts running, so the notification is
written (with the state change) but not delivered; the control plane is `kill -9`ed, the SMTP server and the app
come up, the control plane restarts on the same database, and the user still gets exactly one email, one webhook
and one in-app entry.
"""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import hmac
import json
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from test_identity import svix_signature, user_created

from harness import (
    SECRETS,
    ControlPlane,
    FakeFly,
    assert_no_secrets,
    new_secret,
    refused_port,
    sign_stripe_webhook,
    wait_until,
)

FLY_TOKEN_ENV = "MOLT_E2E_FLY_TOKEN"
STRIPE_KEY_ENV = "MOLT_E2E_STRIPE_KEY"
WEBHOOK_SECRET_ENV = "MOLT_E2E_STRIPE_WHSEC"
CLERK_SECRET_ENV = "MOLT_E2E_CLERK_WHSEC"
RUNNING_DEADLINE = 30.0


class SmtpServer:
    """aiosmtpd on a fixed loopback port, keeping every message it accepts."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list[tuple[str, list[str], bytes]] = []
        self._controller: Controller | None = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 OK"

    def start(self) -> None:
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None


class WebhookApp:
    """The operator's app: answers 503 while `down`, else 204 and keeps the request (headers, body)."""

    def __init__(self) -> None:
        self.down = False
        self.received: list[tuple[dict[str, str], bytes]] = []
        app = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if app.down:
                    self.send_response(503)
                else:
                    app.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hooks/molt"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def verify_standard_webhook(headers: dict[str, str], body: bytes, secret: str) -> None:
    """The Standard Webhooks check, from the spec: v1 = base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}"))
    with key = base64-decoded part of the `whsec_` secret; timestamp within 5 minutes."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    versions = [s.split(",", 1) for s in headers["webhook-signature"].split(" ")]
    assert any(v == "v1" and hmac.compare_digest(sig, expected) for v, sig in versions), headers
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 300, headers


@dataclass
class Stack:
    fly: FakeFly
    cp: ControlPlane
    smtp: SmtpServer
    app: WebhookApp
    stripe_secret: str
    endpoint_secret: str
    clerk_secret: str


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    fly = FakeFly(tmp_path, rate_limits=False)
    smtp = SmtpServer(free_port())
    app = WebhookApp()
    stripe_secret = new_secret("whsec_")
    # Svix keys are the base64 of random bytes after `whsec_`.
    clerk_secret = "whsec_" + base64.b64encode(uuid.uuid4().bytes + uuid.uuid4().bytes).decode()
    SECRETS.add(clerk_secret)
    cp = None
    try:
        cp = ControlPlane(
            tmp_path / "controlplane",
            extra_config={
                # Checkout only: nothing is metered here, so Stripe's API is never called.
                "billing": {
                    "webhook_secret_env": WEBHOOK_SECRET_ENV,
                    "stripe_api_key_env": STRIPE_KEY_ENV,
                    "stripe_base_url": f"http://127.0.0.1:{refused_port()}",
                    "flush_interval": "1h",
                },
                "fleet": {
                    "kind": "fly",
                    "api_url": fly.url,
                    "app": "molt-e2e-notify",
                    "token_env": FLY_TOKEN_ENV,
                    "image": "registry.fly.io/molt-bot:e2e",
                    "gateway_url": "http://{private_ip}:18789/",
                    "proxy_url": f"http://127.0.0.1:{refused_port()}/v1",
                    "health_deadline": "20s",
                    "poll_interval": "100ms",
                    "backoff": "100ms",
                },
                # Users come from the identity provider: Clerk's signed `user.created`.
                "identity": {"webhook_secret_env": CLERK_SECRET_ENV},
                "notifications": {
                    "poll_interval": "100ms",
                    "backoff": "200ms",
                    "max_backoff": "1s",
                    "max_attempts": 100,
                    # A killed worker's claim is taken over after this.
                    "lease": "2s",
                    "email": {
                        "host": "127.0.0.1",
                        "port": smtp.port,
                        "tls": "none",
                        "from": "Molt <notify@molt.test>",
                    },
                },
            },
            extra_env={
                FLY_TOKEN_ENV: fly.token,
                STRIPE_KEY_ENV: new_secret("sk_test_"),
                WEBHOOK_SECRET_ENV: stripe_secret,
                CLERK_SECRET_ENV: clerk_secret,
            },
        )
        created = cp.api("POST", "/webhook-endpoints", {"url": app.url, "description": "e2e app"}, expect=201)
        endpoint_secret = created["secret"]
        SECRETS.add(endpoint_secret)
        yield Stack(fly, cp, smtp, app, stripe_secret, endpoint_secret, clerk_secret)
    finally:
        if cp is not None:
            cp.kill()
            assert_no_secrets(cp.logs(), "control plane log")
        fly.process.kill()
        smtp.stop()
        app.close()


def free_port() -> int:
    """A free port for the SMTP server, which the tests start themselves: until then nothing listens on it, and
    the control plane's deliveries are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pay(stack: Stack, user_id: str) -> None:
    """A signed `checkout.session.completed` for `user_id`, as Stripe delivers it."""
    event = {
        "id": f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "created": int(time.time()),
        "type": "checkout.session.completed",
        "data": {
            "object": {
                "id": f"cs_test_{uuid.uuid4().hex}",
                "object": "checkout.session",
                "payment_status": "paid",
                "client_reference_id": user_id,
                "customer": f"cus_{uuid.uuid4().hex[:14]}",
            }
        },
    }
    body = json.dumps(event).encode()
    signature = sign_stripe_webhook(body, stack.stripe_secret)
    response = httpx.post(
        f"{stack.cp.url}/webhooks/stripe",
        content=body,
        headers={"content-type": "application/json", "stripe-signature": signature},
        timeout=10,
    )
    assert response.status_code == 200, response.text


def new_user(stack: Stack) -> dict[str, Any]:
    """A user signed up at the identity provider: Clerk's `user.created`, signed as Svix signs it."""
    clerk_id = f"user_{uuid.uuid4().hex[:12]}"
    body = json.dumps(user_created(clerk_id, f"n-{uuid.uuid4().hex[:8]}@example.com")).encode()
    msg_id, ts = f"msg_{uuid.uuid4().hex}", int(time.time())
    headers = {
        "content-type": "application/json",
        "svix-id": msg_id,
        "svix-timestamp": str(ts),
        "svix-signature": svix_signature(stack.clerk_secret, msg_id, ts, body),
    }
    response = httpx.post(f"{stack.cp.url}/webhooks/clerk", content=body, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    users = stack.cp.api("GET", "/users?limit=200", expect=200)["items"]
    (user,) = [u for u in users if u.get("clerk_id") == clerk_id]
    return user


def running_bot(cp: ControlPlane, user_id: str) -> dict[str, Any]:
    def running() -> dict[str, Any] | None:
        bots = cp.api("GET", f"/bots?user_id={user_id}", expect=200)["items"]
        assert all(b["status"] != "failed" for b in bots), bots
        return bots[0] if bots and bots[0]["status"] == "running" else None

    return wait_until(running, "the paid user's bot to run", timeout=RUNNING_DEADLINE, interval=0.1)


def in_app(cp: ControlPlane, user_id: str) -> list[dict[str, Any]]:
    return cp.api("GET", f"/users/{user_id}/notifications", expect=200)["items"]


def assert_told_once(stack: Stack, user: dict[str, Any], bot: dict[str, Any]) -> None:
    """Exactly one "bot ready" email, one signed webhook and one in-app entry, also after waiting for more."""
    wait_until(lambda: stack.smtp.messages and stack.app.received, "the email and the webhook", timeout=20)
    time.sleep(2)  # Several worker scans: anything sent twice would be here now.
    assert len(stack.smtp.messages) == 1, stack.smtp.messages
    mail_from, rcpt_tos, raw = stack.smtp.messages[0]
    assert (mail_from, rcpt_tos) == ("notify@molt.test", [user["email"]])
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert message["Subject"] == "Your bot is ready"
    assert message["To"] == user["email"]
    assert message.get_content_type() == "multipart/alternative"
    plain = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert plain is not None and html is not None, raw
    assert "Your bot is running and ready to chat." in plain.get_content()
    assert "<h1" in html.get_content() and "Your bot is ready" in html.get_content()

    assert len(stack.app.received) == 1, stack.app.received
    headers, body = stack.app.received[0]
    verify_standard_webhook(headers, body, stack.endpoint_secret)
    event = json.loads(body)
    assert event["type"] == "bot.running"
    assert event["data"]["user_id"] == user["id"]
    assert event["data"]["details"]["bot_id"] == bot["id"]

    entries = in_app(stack.cp, user["id"])
    assert [e["kind"] for e in entries] == ["bot.running"], entries
    assert entries[0]["id"] == headers["webhook-id"]
    assert sorted((d["channel"], d["status"]) for d in entries[0]["deliveries"]) == [
        ("email", "delivered"),
        ("webhook", "delivered"),
    ], entries


def test_a_paid_checkout_tells_the_user_once_by_email_webhook_and_in_app(stack: Stack) -> None:
    stack.smtp.start()
    user = new_user(stack)
    pay(stack, user["clerk_id"])
    bot = running_bot(stack.cp, user["id"])
    assert_told_once(stack, user, bot)


def test_kill_9_between_the_state_change_and_delivery_still_tells_once(stack: Stack) -> None:
    # The SMTP server is not started and the app answers 503: the bot runs, the notification is recorded with
    # that step, and every delivery attempt fails.
    stack.app.down = True
    user = new_user(stack)
    pay(stack, user["clerk_id"])
    bot = running_bot(stack.cp, user["id"])

    def tried() -> list[dict[str, Any]] | None:
        entries = in_app(stack.cp, user["id"])
        deliveries = entries[0]["deliveries"] if entries else []
        failing = [d for d in deliveries if d["status"] == "pending" and d["attempts"] >= 1]
        return deliveries if len(failing) == 2 else None

    deliveries = wait_until(tried, "both deliveries to have failed once", timeout=20)
    assert all(d["last_error"] for d in deliveries), deliveries
    assert stack.smtp.messages == [] and stack.app.received == []

    stack.cp.process.send_signal(signal.SIGKILL)
    assert stack.cp.process.wait(timeout=10) == -signal.SIGKILL
    stack.cp.process.kill()  # only closes its log now
    stack.smtp.start()
    stack.app.down = False
    stack.cp.start()
    assert_told_once(stack, user, bot)
    metrics = httpx.get(f"{stack.cp.url}/metrics", timeout=10).text
    assert 'molt_cp_notification_deliveries_total{channel="email",result="delivered"} 1' in metrics, metrics
    assert 'molt_cp_notification_outbox_depth{channel="webhook"} 0' in metrics, metrics
