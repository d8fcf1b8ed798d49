"""Identity (Clerk) end to end through `molt dev`: a `user.created` webhook signed in this test as Svix signs it
makes a Molt user; a session token signed with the key this test's JWKS server publishes (RS256, as Clerk's)
is then accepted by the data plane, its usage lands under that user with key id `jwt`; tampered webhooks and
tokens from an unpublished key are refused. The JWKS is fetched by the control plane only: the data plane gets
the keys in its snapshot.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from harness import wait_until
from test_dev import Dev

ISSUER = "https://clerk.molt.test"
APP = "https://app.molt.test"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def uint(n: int) -> str:
    return b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))


class SigningKey:
    """An RSA key as Clerk's instance keys are: RS256, published in the JWKS under `kid`."""

    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwk(self) -> dict[str, str]:
        numbers = self.private.public_key().public_numbers()
        return {"use": "sig", "kty": "RSA", "kid": self.kid, "alg": "RS256", "n": uint(numbers.n), "e": uint(numbers.e)}

    def token(self, claims: dict[str, Any]) -> str:
        header = {"alg": "RS256", "typ": "JWT", "kid": self.kid}
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        signature = self.private.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64url(signature)}"


class JwksServer:
    """`/.well-known/jwks.json` on a loopback port, publishing `keys`."""

    def __init__(self, keys: list[SigningKey]) -> None:
        self.keys = keys
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                outer.fetches += 1
                body = json.dumps({"keys": [k.jwk() for k in outer.keys]}).encode()
                self.send_response(200 if self.path == "/.well-known/jwks.json" else 404)
                self.send_header("content-type", "application/json")
                self.send_header("cache-control", "public, max-age=60")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()


def svix_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, keyed by the base64 part of `whsec_...`."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def post_webhook(dev: Dev, msg_id: str, event: dict[str, Any], *, tamper: bool = False) -> httpx.Response:
    body = json.dumps(event).encode()
    ts = int(time.time())
    signature = svix_signature(dev.env["MOLT_CLERK_WEBHOOK_SECRET"], msg_id, ts, body)
    if tamper:
        body = body.replace(b"ada@", b"eve@")
    headers = {"svix-id": msg_id, "svix-timestamp": str(ts), "svix-signature": signature}
    headers["content-type"] = "application/json"
    return httpx.post(f"{dev.env['MOLT_ADMIN_URL']}/webhooks/clerk", content=body, headers=headers, timeout=10)


def user_created(clerk_id: str, email: str) -> dict[str, Any]:
    now_ms = int(time.time() * 1000)
    return {
        "object": "event",
        "type": "user.created",
        "timestamp": now_ms,
        "data": {
            "id": clerk_id,
            "object": "user",
            "created_at": now_ms,
            "updated_at": now_ms,
            "primary_email_address_id": "idn_1",
            "email_addresses": [{"id": "idn_1", "object": "email_address", "email_address": email}],
        },
    }


def session_claims(sub: str) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": sub, "iss": ISSUER, "azp": APP, "iat": now, "nbf": now - 5, "exp": now + 60, "sid": "sess_1"}


@pytest.fixture
def key() -> SigningKey:
    return SigningKey("ins_e2e_key_1")


@pytest.fixture
def jwks(key: SigningKey) -> Iterator[JwksServer]:
    server = JwksServer([key])
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def dev(tmp_path: Path, jwks: JwksServer) -> Iterator[Dev]:
    running = Dev(
        tmp_path,
        "--clerk-jwks-url",
        jwks.url,
        "--clerk-issuer",
        ISSUER,
        "--clerk-authorized-party",
        APP,
    )
    try:
        yield running
    finally:
        running.process.kill()


def chat(dev: Dev, token: str) -> httpx.Response:
    return httpx.post(
        f"{dev.env['MOLT_URL']}/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]},
        headers={"authorization": f"Bearer {token}"},
        timeout=10,
    )


def test_a_clerk_user_made_by_webhook_calls_the_gateway_with_a_session_token(
    dev: Dev, key: SigningKey, jwks: JwksServer
) -> None:
    secret = dev.env.get("MOLT_CLERK_WEBHOOK_SECRET", "")
    assert secret.startswith("whsec_"), dev.env
    assert "/webhooks/clerk" in dev.process.logs()
    dev.wait_serving()

    # A tampered delivery is refused and makes nobody.
    refused = post_webhook(dev, "msg_e2e_0", user_created("user_e2e", "ada@example.com"), tamper=True)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "invalid_signature"

    made = post_webhook(dev, "msg_e2e_1", user_created("user_e2e", "ada@example.com"))
    assert made.status_code == 200, made.text
    assert made.json() == {"received": True, "result": "created"}
    again = post_webhook(dev, "msg_e2e_1", user_created("user_e2e", "ada@example.com"))
    assert again.json()["result"] == "duplicate", again.text

    users = httpx.get(f"{dev.env['MOLT_ADMIN_URL']}/api/v1/users", headers=dev.admin, timeout=10).json()["items"]
    user = next(u for u in users if u.get("clerk_id") == "user_e2e")
    assert user["email"] == "ada@example.com" and user["status"] == "active", user

    # The control plane fetched the JWKS; the snapshot with the key and the user reaches the data plane.
    token = key.token(session_claims("user_e2e"))

    def accepted() -> httpx.Response | None:
        r = chat(dev, token)
        return r if r.status_code == 200 else None

    answer = wait_until(accepted, "the data plane to accept the Clerk session token", timeout=20, interval=0.2)
    request_id = answer.headers["x-request-id"]
    assert jwks.fetches >= 1

    # Refused: a key the JWKS does not publish, a subject with no Molt user, another app's token.
    stranger = SigningKey("ins_e2e_key_unpublished")
    assert chat(dev, stranger.token(session_claims("user_e2e"))).status_code == 401
    assert chat(dev, key.token(session_claims("user_nobody"))).status_code == 401
    other_app = {**session_claims("user_e2e"), "azp": "https://evil.example"}
    assert chat(dev, key.token(other_app)).status_code == 401

    # Its usage lands under the Molt user, as a JWT request.
    def usage() -> dict[str, Any] | None:
        r = httpx.get(
            f"{dev.env['MOLT_ADMIN_URL']}/api/v1/usage",
            params={"user_id": user["id"]},
            headers=dev.admin,
            timeout=10,
        )
        totals = r.json()["totals"]
        return totals if totals["requests"] >= 1 else None

    totals = wait_until(usage, "the session token's usage at the control plane", timeout=20, interval=0.2)
    assert totals["requests"] == 1 and totals["input_tokens"] > 0, totals

    # The data plane's own record of the request (molt dev's `[usage] file`): the Molt user, key id `jwt`.
    def event() -> dict[str, Any] | None:
        path = dev.dir / "usage.jsonl"
        lines = path.read_text().splitlines() if path.is_file() else []
        return next((e for e in map(json.loads, lines) if e["request_id"] == request_id), None)

    recorded = wait_until(event, "the request's usage event in .molt/usage.jsonl", timeout=10, interval=0.1)
    assert (recorded["key_id"], recorded["user_id"]) == ("jwt", user["id"]), recorded
