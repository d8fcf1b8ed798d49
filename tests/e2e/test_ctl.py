"""`molt ctl` end to end: the operator's CLI against a real `molt controlplane` (SQLite, local fleet), the way an
operator uses it: environment for the URL and token, readable tables by default, `--json` for scripts, and a clear
message with a non-zero exit on every refusal.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import MOLT_BIN, ControlPlane, new_secret, require_binary, serve_controlplane

PROVIDER_KEY_ENV = "MOLT_E2E_CTL_PROVIDER_KEY"


@pytest.fixture
def controlplane(tmp_path: Path) -> Iterator[ControlPlane]:
    fleet = {"kind": "local", "proxy_url": "http://127.0.0.1:1/v1", "poll_interval": "100ms"}
    cp = ControlPlane(tmp_path / "controlplane", extra_config={"fleet": fleet})
    yield from serve_controlplane(cp)


def ctl(
    cp: ControlPlane, *args: str, token: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    binary = require_binary(MOLT_BIN, "molt binary")
    full_env = {
        **os.environ,
        "MOLT_ADMIN_URL": cp.url,
        "MOLT_ADMIN_TOKEN": token if token is not None else cp.admin_token,
        "RUST_BACKTRACE": "0",
        **(env or {}),
    }
    return subprocess.run([binary, "ctl", *args], capture_output=True, text=True, timeout=30, check=False, env=full_env)


def ok(cp: ControlPlane, *args: str, **kwargs: Any) -> str:
    result = ctl(cp, *args, **kwargs)
    assert result.returncode == 0, f"molt ctl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}"
    return result.stdout


def ok_json(cp: ControlPlane, *args: str, **kwargs: Any) -> Any:
    return json.loads(ok(cp, "--json", *args, **kwargs))


def test_an_operator_sets_up_a_tenant_with_molt_ctl(controlplane: ControlPlane) -> None:
    cp = controlplane
    provider_key = new_secret("sk-upstream-")
    env = {PROVIDER_KEY_ENV: provider_key}
    ok(cp, "providers", "create", "--name", "openai", "--kind", "openai", "--base-url", "https://api.openai.com/v1",
       "--key-env", PROVIDER_KEY_ENV, env=env)
    ok(cp, "models", "create", "--name", "gpt-4o-mini", "--provider", "openai", "--input-price", "0.15",
       "--output-price", "0.6")
    plan = ok_json(cp, "plans", "create", "--name", "starter", "--limit", "requests_per_minute=60")
    assert plan["limits"] == {"requests_per_minute": 60}
    user = ok_json(cp, "users", "create", "--email", "ada@example.com", "--plan", "starter")
    assert user["plan"] == "starter"

    # Tables: a header row with the columns, then one row per item.
    table = ok(cp, "users", "list").splitlines()
    assert table[0].split() == ["ID", "EMAIL", "STATUS", "PLAN", "STRIPE_CUSTOMER_ID"], table
    assert any("ada@example.com" in line and "starter" in line for line in table[1:]), table

    key = ok_json(cp, "keys", "create", "--user-id", user["id"], "--model", "gpt-4o-mini")
    assert key["secret"].startswith("molt_sk_")
    key_id = key["key"]["id"]
    listed = ok_json(cp, "keys", "list", "--user-id", user["id"])
    assert [k["id"] for k in listed["items"]] == [key_id]
    assert key["secret"] not in json.dumps(listed), "a key's secret is shown once, at creation"
    providers = ok(cp, "providers", "list")
    assert "openai" in providers and provider_key not in providers, "master keys are never returned"
    revoked = ok_json(cp, "keys", "revoke", key_id)
    assert revoked["revoked_at"]

    # The plan's limits reach the user's line; raising them is one command.
    ok(cp, "plans", "update", "starter", "--limit", "requests_per_minute=120")
    assert ok_json(cp, "plans", "get", "starter")["limits"] == {"requests_per_minute": 120}

    # Bots: create, watch it run, stop, delete.
    bot = ok_json(cp, "bots", "create", "--user-id", user["id"])
    assert bot["status"] == "requested"
    deadline = time.monotonic() + 20
    while (status := ok_json(cp, "bots", "get", bot["id"])["status"]) != "running":
        assert status != "failed" and time.monotonic() < deadline, f"bot stuck in {status}"
        time.sleep(0.2)
    assert bot["id"] in ok(cp, "bots", "list")
    ok(cp, "bots", "stop", bot["id"])
    ok(cp, "bots", "delete", bot["id"])

    usage = ok_json(cp, "usage", "--user-id", user["id"])
    assert usage["totals"]["requests"] == 0
    audit = ok_json(cp, "audit", "--limit", "100")
    actions = {entry["action"] for entry in audit["items"]}
    assert {"user.create", "key.create", "key.revoke", "plan.create", "plan.update", "bot.create"} <= actions, actions
    assert provider_key not in json.dumps(audit), "the audit log holds no secret"


def test_refusals_are_clear_and_exit_non_zero(controlplane: ControlPlane) -> None:
    cp = controlplane
    wrong = ctl(cp, "users", "list", token=new_secret("molt-admin-wrong-"))
    assert wrong.returncode != 0 and "401" in wrong.stderr, wrong.stderr
    ok(cp, "users", "create", "--email", "dup@example.com")
    duplicate = ctl(cp, "users", "create", "--email", "dup@example.com")
    assert duplicate.returncode != 0 and "409" in duplicate.stderr and "email" in duplicate.stderr, duplicate.stderr
    unknown_plan = ctl(cp, "users", "create", "--email", "x@example.com", "--plan", "gold")
    assert unknown_plan.returncode != 0 and "plan" in unknown_plan.stderr, unknown_plan.stderr
    zero = ctl(cp, "plans", "create", "--name", "zero", "--limit", "tokens_per_minute=0")
    assert zero.returncode != 0 and "tokens_per_minute" in zero.stderr, zero.stderr
    missing = ctl(cp, "bots", "get", "no-such-bot")
    assert missing.returncode != 0 and "404" in missing.stderr, missing.stderr
    for result in (wrong, duplicate, unknown_plan, zero, missing):
        assert "panicked" not in result.stderr and "stack backtrace" not in result.stderr.lower(), result.stderr
    bad_url = ctl(cp, "--url", "ftp://127.0.0.1:1", "users", "list")
    assert bad_url.returncode != 0 and "ftp://" in bad_url.stderr, bad_url.stderr
