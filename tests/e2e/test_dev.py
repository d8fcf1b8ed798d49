"""`molt dev`: the whole product on loopback from one command, billing included. It runs a fake Stripe in-process,
prints its URL and the webhook signing secret with the rest of what a client needs, and bills the dev user's
traffic to it in short windows, so meter events show up while a developer watches. `--no-billing` turns that off.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness import MOLT_BIN, Process, read_ready_file, require_binary, sign_stripe_webhook, wait_until

PORTS = ("http", "tls", "admin", "mock", "controlplane", "stripe", "smtp")
# The ready file's name for each of them.
READY_NAMES = {"http": "http", "tls": "https", "admin": "admin", "mock": "mock", "controlplane": "api", "stripe": "stripe",
               "smtp": "smtp"}


class Dev:
    """`molt dev` on free ports, with its `.molt` directory under a temporary directory."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        self.dir = workdir / ".molt"
        argv: list[str | Path] = [require_binary(MOLT_BIN, "molt binary"), "dev", "--dir", self.dir]
        for name in PORTS:
            argv += [f"--{name}", "127.0.0.1:0"]
        ready = workdir / "dev.ready.json"
        # Empty provider keys: the mock provider answers, never a real API.
        self.process = Process(
            [*argv, "--ready-file", ready, *extra],
            workdir / "dev.log",
            extra_env={"OPENAI_API_KEY": "", "ANTHROPIC_API_KEY": ""},
        )
        listeners = read_ready_file(self.process, ready, "molt dev", timeout=60)
        self.ports = {
            name: int(listeners[READY_NAMES[name]].rsplit(":", 1)[1])
            for name in PORTS
            if READY_NAMES[name] in listeners
        }
        wait_until(self._started, "molt dev's banner and .molt/dev.env", timeout=60, interval=0.1)
        self.env = read_env_file(self.dir / "dev.env")
        self.admin = {"authorization": f"Bearer {self.env['MOLT_ADMIN_TOKEN']}"}

    def _started(self) -> bool:
        if not self.process.alive():
            raise AssertionError(f"molt dev exited:\n{self.process.describe()}")
        return "Operate it:" in self.process.logs() and (self.dir / "dev.env").is_file()

    def chat(self) -> httpx.Response:
        return httpx.post(
            f"{self.env['MOLT_URL']}/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]},
            headers={"authorization": f"Bearer {self.env['MOLT_API_KEY']}"},
            timeout=10,
        )

    def wait_serving(self) -> None:
        def ok() -> bool:
            try:
                return self.chat().status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ok, "molt dev's data plane to answer a chat request", timeout=30, interval=0.1)


def read_env_file(path: Path) -> dict[str, str]:
    """`export NAME=value` lines as a shell would read them (PATH left out)."""
    env = {}
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        words = shlex.split(line)
        assert words[0] == "export" and len(words) == 2, f"not an export line in {path}: {line!r}"
        name, value = words[1].split("=", 1)
        if name != "PATH":
            env[name] = value
    return env


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Dev]:
    running = Dev(tmp_path)
    try:
        yield running
    finally:
        running.process.kill()


def test_molt_dev_bills_usage_to_a_local_fake_stripe(dev: Dev) -> None:
    stripe_url = f"http://127.0.0.1:{dev.ports['stripe']}"
    assert dev.env.get("MOLT_STRIPE_URL") == stripe_url, dev.env
    secret = dev.env.get("MOLT_STRIPE_WEBHOOK_SECRET", "")
    assert secret.startswith("whsec_") and len(secret) > 20, dev.env
    banner = dev.process.logs()
    for line in (f"MOLT_STRIPE_URL={stripe_url}", f"MOLT_STRIPE_WEBHOOK_SECRET={secret}", "/_fake/meter_events"):
        assert line in banner, f"{line!r} not in molt dev's banner:\n{banner[-3000:]}"

    dev.wait_serving()
    for _ in range(2):
        assert dev.chat().status_code == 200
    # The tokens the provider (molt dev's in-process mock) reported, from its own record.
    records = httpx.get(f"http://127.0.0.1:{dev.ports['mock']}/_mock/requests", timeout=5).json()
    tokens = sum(r["usage"]["input_tokens"] + r["usage"]["output_tokens"] for r in records)
    assert records and tokens > 0, records

    cp = dev.env["MOLT_ADMIN_URL"]

    def reconciled() -> dict[str, Any] | None:
        # Windows are 10 s under molt dev: flush until the last one has closed and been reported.
        flushed = httpx.post(f"{cp}/api/v1/billing/flush", headers=dev.admin, timeout=10)
        assert flushed.status_code == 200, flushed.text
        rec = httpx.get(f"{cp}/api/v1/billing/reconciliation", headers=dev.admin, timeout=5).json()
        return rec if rec["totals"]["reported_tokens"] >= tokens else None

    rec = wait_until(reconciled, "the dev user's usage reported to the fake Stripe", timeout=40, interval=0.5)
    # molt dev's meter counts money: units of $0.00001, the part below a unit carried to the next report.
    events = httpx.get(f"{stripe_url}/_fake/meter_events", timeout=5).json()["data"]
    assert {e["stripe_customer_id"] for e in events} == {"cus_molt_dev"}, events
    assert {e["event_name"] for e in events} == {"ai_cost"}, events
    cost = Decimal(rec["totals"]["usage_cost_usd"]) * 10**12
    units = sum(int(e["value"]) for e in events)
    assert 0 <= cost - units * 10**7 < 10**7, f"{events}: {units} units for a cost of {cost} picodollars"
    assert Decimal(rec["totals"]["reported_usd"]) * 10**12 == units * 10**7, rec
    totals = {k: rec["totals"][k] for k in ("usage_tokens", "reported_tokens", "difference", "unpriced_events")}
    assert totals == {"usage_tokens": tokens, "reported_tokens": tokens, "difference": 0, "unpriced_events": 0}, rec

    # Webhooks signed with the printed secret are accepted.
    event = json.dumps(
        {
            "id": "evt_dev_invoice_paid",
            "object": "event",
            "type": "invoice.paid",
            "created": int(time.time()),
            "data": {"object": {"id": "in_dev", "object": "invoice", "customer": "cus_molt_dev"}},
        }
    ).encode()
    response = httpx.post(
        f"{cp}/webhooks/stripe", content=event, headers={"stripe-signature": sign_stripe_webhook(event, secret)}
    )
    assert response.status_code == 200 and response.json()["result"] == "handled", response.text


def test_molt_dev_delivers_notification_email_to_its_sink_and_lists_it_in_app(dev: Dev) -> None:
    cp = dev.env["MOLT_ADMIN_URL"]
    users = httpx.get(f"{cp}/api/v1/users", headers=dev.admin, timeout=5).json()["items"]
    user = next(u for u in users if u["email"] == "dev@molt.local")
    created = httpx.post(f"{cp}/api/v1/bots", json={"user_id": user["id"]}, headers=dev.admin, timeout=5)
    assert created.status_code == 202, created.text
    mail = dev.dir / "mail" / "1.eml"
    wait_until(mail.is_file, f"the bot-ready email in {mail}", timeout=40, interval=0.2)
    message = email.message_from_bytes(mail.read_bytes(), policy=email.policy.default)
    assert message["Subject"] == "Your bot is ready" and message["To"] == "dev@molt.local", message
    assert message.get_body(("plain",)) is not None and message.get_body(("html",)) is not None
    assert str(mail) in dev.process.logs(), "molt dev does not say where the email is"
    entries = httpx.get(f"{cp}/api/v1/users/{user['id']}/notifications", headers=dev.admin, timeout=5).json()
    assert [e["kind"] for e in entries["items"]] == ["bot.running"], entries


def test_molt_dev_no_billing_runs_without_stripe(tmp_path: Path) -> None:
    dev = Dev(tmp_path, "--no-billing")
    try:
        assert "MOLT_STRIPE_URL" not in dev.env, dev.env
        assert "Billing: off (--no-billing)" in dev.process.logs()
        dev.wait_serving()
        cp = dev.env["MOLT_ADMIN_URL"]
        response = httpx.get(f"{cp}/api/v1/billing/reconciliation", headers=dev.admin, timeout=5)
        assert response.status_code == 404, response.text
        # Nothing listens for Stripe: the ready file names no such listener.
        assert "stripe" not in dev.ports, dev.ports
    finally:
        dev.process.kill()


def test_printed_operate_command_works_as_printed(dev: Dev, tmp_path: Path) -> None:
    """The banner's `source <dev.env> && molt ctl users list`, pasted into a shell that has no molt on its PATH
    and none of the variables set: dev.env exports them and puts molt's directory first on PATH."""
    printed = [line.strip() for line in dev.process.logs().splitlines() if "molt ctl users list" in line]
    assert printed, f"no operate command in molt dev's banner:\n{dev.process.logs()[-3000:]}"
    command = printed[-1]
    assert command == f"source {dev.dir / 'dev.env'} && molt ctl users list", command
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("MOLT_")}
    clean_env["PATH"] = "/usr/bin:/bin"
    done = subprocess.run(
        ["bash", "-c", command], cwd=tmp_path, env=clean_env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, f"{command!r} failed:\n{done.stdout}\n{done.stderr}"
    assert "dev@molt.local" in done.stdout, done.stdout


def test_molt_dev_stops_at_once_on_sigterm_when_idle(tmp_path: Path) -> None:
    dev = Dev(tmp_path, "--no-billing")
    try:
        dev.wait_serving()
        started = time.monotonic()
        dev.process.send_signal(signal.SIGTERM)
        assert dev.process.wait(20) == 0
        took = time.monotonic() - started
        assert took < 5, f"an idle molt dev took {took:.1f}s to stop on SIGTERM"
    finally:
        dev.process.kill()
