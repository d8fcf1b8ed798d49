"""The control plane's served OpenAPI document, checked against the live server by a third-party
tool: schemathesis generates requests from the document (valid and invalid, with an admin token)
and no request it makes may get a 5xx. The run is bounded (examples per operation and time)."""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from harness import MOLT_BIN, Process, free_port, require_binary, wait_until


def start_control_plane(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Process, str, str]:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    admin = "admin-" + secrets.token_urlsafe(24)
    (workdir / "controlplane.toml").write_text(
        f"""
listen = "127.0.0.1:{port}"
database_url = "sqlite://{workdir}/cp.db?mode=rwc"
[secrets]
encryption_key_env = "MOLT_TEST_ENCRYPTION_KEY"
dataplane_token_env = "MOLT_TEST_DATAPLANE_TOKEN"
bootstrap_admin_token_env = "MOLT_TEST_ADMIN_TOKEN"
[jwt]
issuer = "molt-test"
secret_env = "MOLT_TEST_JWT_SECRET"
"""
    )
    env = {
        "MOLT_TEST_ENCRYPTION_KEY": secrets.token_hex(32),
        "MOLT_TEST_DATAPLANE_TOKEN": "dp-" + secrets.token_urlsafe(24),
        "MOLT_TEST_ADMIN_TOKEN": admin,
        "MOLT_TEST_JWT_SECRET": secrets.token_urlsafe(48),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    binary = require_binary(MOLT_BIN, "molt binary")
    proc = Process([binary, "controlplane", "--config", workdir / "controlplane.toml"], workdir / "cp.log")
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool | None:
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200 or None
        except httpx.HTTPError:
            return None

    wait_until(healthy, "control plane /healthz", timeout=20)
    return proc, url, admin


def test_no_generated_request_gets_a_server_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc, url, admin = start_control_plane(tmp_path / "cp", monkeypatch)
    try:
        schemathesis = Path(sys.executable).with_name("schemathesis")
        result = subprocess.run(
            [
                schemathesis,
                "run",
                f"{url}/api/v1/openapi.json",
                "--header",
                f"Authorization: Bearer {admin}",
                "--checks",
                "not_a_server_error",
                "--max-examples",
                "15",
                "--workers",
                "2",
                "--request-timeout",
                "10",
                "--generation-deterministic",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
            cwd=tmp_path,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-6000:]
        # Guard against a vacuous pass (an empty or unreadable document).
        tested = re.search(r"Tested:\s*(\d+)", output)
        assert tested and int(tested.group(1)) >= 15, output[-3000:]
    finally:
        proc.kill()
    assert "panicked" not in proc.logs()
