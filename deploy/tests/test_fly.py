"""deploy/fly/bot-machine.json documents the machine the provisioner creates for each bot. This checks it against
what the provisioner really sends: a `molt controlplane` with deploy/fly/controlplane.toml's [fleet] (pointed at
`molt fake-fly`, which keeps request bodies as sent) provisions a bot, and the machine config Fly received must have
exactly the documented fields, with the documented value wherever the document does not show a placeholder (<...>).
"""

from __future__ import annotations

import json
import re
import secrets
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import tomli_w
from conftest import DEPLOY, Process, answers, free_port, require_molt, wait_until

FLY = DEPLOY / "fly"
TOKEN = "fly-token-" + secrets.token_hex(8)


@pytest.fixture
def provisioner(tmp_path: Path) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(fake Fly URL, control plane URL, the [fleet] section used)."""
    fly_port, cp_port = free_port(), free_port()
    fly = Process(
        [require_molt(), "fake-fly", "--listen", f"127.0.0.1:{fly_port}", "--token", TOKEN, "--no-rate-limits"],
        tmp_path / "fake-fly.log",
    )
    fleet = tomllib.loads((FLY / "controlplane.toml").read_text())["fleet"]
    fleet |= {"api_url": f"http://127.0.0.1:{fly_port}", "token_env": "MOLT_T_FLY"}
    config = {
        "listen": f"127.0.0.1:{cp_port}",
        "database_url": f"sqlite://{tmp_path / 'cp.db'}?mode=rwc",
        "secrets": {
            "encryption_key_env": "MOLT_T_KEY",
            "dataplane_token_env": "MOLT_T_DP",
            "bootstrap_admin_token_env": "MOLT_T_ADMIN",
        },
        "jwt": {"issuer": "molt-t", "secret_env": "MOLT_T_JWT"},
        "fleet": fleet,
    }
    (tmp_path / "cp.toml").write_text(tomli_w.dumps(config))
    env = {
        "MOLT_T_KEY": secrets.token_hex(32),
        "MOLT_T_DP": "dp-" + secrets.token_hex(16),
        "MOLT_T_ADMIN": "admin-" + secrets.token_hex(16),
        "MOLT_T_JWT": secrets.token_hex(32),
        "MOLT_T_FLY": TOKEN,
    }
    cp = Process([require_molt(), "controlplane", "--config", tmp_path / "cp.toml"], tmp_path / "cp.log", env=env)
    try:
        cp_url = f"http://127.0.0.1:{cp_port}"
        wait_until(lambda: answers(f"{cp_url}/healthz"), "the control plane", timeout=30)
        yield f"http://127.0.0.1:{fly_port}", cp_url, fleet | {"admin": env["MOLT_T_ADMIN"]}
    finally:
        cp.kill()
        fly.kill()


def assert_matches(documented: Any, sent: Any, path: str) -> None:
    if isinstance(documented, dict):
        assert isinstance(sent, dict) and sorted(sent) == sorted(documented), (
            f"{path}: sent {sent!r}, documented {documented!r}"
        )
        for key in documented:
            assert_matches(documented[key], sent[key], f"{path}.{key}")
    elif (
        isinstance(documented, list)
        and len(documented) == 1
        and isinstance(documented[0], str)
        and "<" in documented[0]
    ):
        # A list of whatever the placeholder says, any length.
        assert isinstance(sent, list) and all(isinstance(s, str) for s in sent), f"{path}: sent {sent!r}"
    elif isinstance(documented, list):
        assert isinstance(sent, list) and len(sent) == len(documented), (
            f"{path}: sent {sent!r}, documented {documented!r}"
        )
        for i, (d, s) in enumerate(zip(documented, sent, strict=True)):
            assert_matches(d, s, f"{path}[{i}]")
    elif isinstance(documented, str) and "<" in documented:
        assert isinstance(sent, str) and sent, f"{path}: sent {sent!r}"
        # The fixed part around the placeholder must match.
        pattern = re.escape(documented)
        pattern = re.sub(r"<[^>]*>", ".+", pattern.replace(r"\<", "<").replace(r"\>", ">"))
        assert re.fullmatch(pattern, sent), f"{path}: sent {sent!r}, documented {documented!r}"
    else:
        assert sent == documented, f"{path}: sent {sent!r}, documented {documented!r}"


def test_the_documented_bot_machine_is_what_the_provisioner_sends(provisioner: tuple[str, str, dict[str, Any]]) -> None:
    fly_url, cp_url, fleet = provisioner
    admin = {"authorization": f"Bearer {fleet['admin']}"}
    user = httpx.post(f"{cp_url}/api/v1/users", json={"email": "fly-doc@example.com"}, headers=admin, timeout=10).json()
    bot = httpx.post(f"{cp_url}/api/v1/bots", json={"user_id": user["id"]}, headers=admin, timeout=10)
    assert bot.status_code == 202, bot.text

    def machines() -> list[dict[str, Any]]:
        response = httpx.get(
            f"{fly_url}/v1/apps/{fleet['app']}/machines", headers={"authorization": f"Bearer {TOKEN}"}, timeout=5
        )
        response.raise_for_status()
        return response.json()

    (machine,) = wait_until(machines, "the provisioner to create the bot's machine", timeout=30)
    documented = json.loads((FLY / "bot-machine.json").read_text())
    assert_matches(documented["name"], machine["name"], "name")
    assert machine["region"] == documented["region"] == fleet["region"]
    sent = machine["config"]
    # CLAWDBOT_CONFIG is JSON text: compare it as JSON.
    assert_matches(
        json.loads(documented["config"]["env"]["CLAWDBOT_CONFIG"]),
        json.loads(sent["env"]["CLAWDBOT_CONFIG"]),
        "CLAWDBOT_CONFIG",
    )
    documented["config"]["env"]["CLAWDBOT_CONFIG"] = "<JSON, compared above>"
    assert_matches(documented["config"], sent, "config")
    assert sent["metadata"] == {"molt_bot_id": bot.json()["id"], "molt_user_id": user["id"]}
    assert sent["image"] == fleet["image"] and sent["env"]["PROXY_URL"] == fleet["proxy_url"]
