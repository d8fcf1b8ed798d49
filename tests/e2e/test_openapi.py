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

from harness import MOLT_BIN, Process, refused_port, require_binary, start_server


def start_control_plane(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Process, str, str]:
    workdir.mkdir(parents=True, exist_ok=True)
    admin = "admin-" + secrets.token_urlsafe(24)
    (workdir / "controlplane.toml").write_text(
        f"""
listen = "127.0.0.1:0"
database_url = "sqlite://{workdir}/cp.db?mode=rwc"
[secrets]
encryption_key_env = "MOLT_TEST_ENCRYPTION_KEY"
dataplane_token_env = "MOLT_TEST_DATAPLANE_TOKEN"
bootstrap_admin_token_env = "MOLT_TEST_ADMIN_TOKEN"
[jwt]
issuer = "molt-test"
secret_env = "MOLT_TEST_JWT_SECRET"
# Billing on, so its operations (reconciliation, flush) are served and fuzzed too. Nothing is ever
# billed (no usage), so the Stripe URL, where nothing listens, is never called.
[billing]
webhook_secret_env = "MOLT_TEST_WEBHOOK_SECRET"
stripe_api_key_env = "MOLT_TEST_STRIPE_KEY"
stripe_base_url = "http://127.0.0.1:{refused_port()}"
"""
    )
    env = {
        "MOLT_TEST_ENCRYPTION_KEY": secrets.token_hex(32),
        "MOLT_TEST_DATAPLANE_TOKEN": "dp-" + secrets.token_urlsafe(24),
        "MOLT_TEST_ADMIN_TOKEN": admin,
        "MOLT_TEST_JWT_SECRET": secrets.token_urlsafe(48),
        "MOLT_TEST_WEBHOOK_SECRET": "whsec_" + secrets.token_hex(16),
        "MOLT_TEST_STRIPE_KEY": "sk_test_" + secrets.token_hex(16),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    binary = require_binary(MOLT_BIN, "molt binary")
    proc, listeners = start_server(
        [binary, "controlplane", "--config", workdir / "controlplane.toml"], workdir / "cp.log", "control plane"
    )
    url = f"http://{listeners['api']}"
    return proc, url, admin


def schemathesis(url: str, admin: str, cwd: Path, *options: str) -> str:
    """Run schemathesis against the served document; fail with its report unless it passes; return its output."""
    binary = Path(sys.executable).with_name("schemathesis")
    result = subprocess.run(
        [
            binary,
            "run",
            f"{url}/api/v1/openapi.json",
            "--header",
            f"Authorization: Bearer {admin}",
            "--workers",
            "2",
            "--request-timeout",
            "10",
            "--generation-deterministic",
            "--no-color",
            *options,
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=cwd,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    return output


def operations_tested(output: str) -> int:
    tested = re.search(r"Tested:\s*(\d+)", output)
    assert tested, output[-3000:]
    return int(tested.group(1))


def test_no_generated_request_gets_a_server_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc, url, admin = start_control_plane(tmp_path / "cp", monkeypatch)
    try:
        paths = httpx.get(f"{url}/api/v1/openapi.json", timeout=5).json()["paths"]
        for path, method in (("/api/v1/billing/reconciliation", "get"), ("/api/v1/billing/flush", "post")):
            assert method in paths.get(path, {}), f"{method.upper()} {path} is not in the OpenAPI document"
        output = schemathesis(url, admin, tmp_path, "--checks", "not_a_server_error", "--max-examples", "15")
        # Guard against a vacuous pass (an empty or unreadable document).
        assert operations_tested(output) >= 15, output[-3000:]
    finally:
        proc.kill()
    assert "panicked" not in proc.logs()


def test_billing_responses_conform_to_the_document(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The billing operations answer only documented statuses, content types and bodies of the documented schema."""
    proc, url, admin = start_control_plane(tmp_path / "cp", monkeypatch)
    try:
        checks = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
        only_billing = ("--include-path-regex", "^/api/v1/billing/")
        output = schemathesis(url, admin, tmp_path, *only_billing, "--checks", checks, "--max-examples", "30")
        assert operations_tested(output) == 2, output[-3000:]
    finally:
        proc.kill()
    assert "panicked" not in proc.logs()
