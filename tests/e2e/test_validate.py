"""The `molt` command line: `dataplane --validate`, `controlplane --validate` and `--migrate`, `probe`, `key new`."""

from __future__ import annotations

import copy
import http.server
import re
import os
import sqlite3
import subprocess
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import MOLT_BIN, REPO_ROOT, World, refused_port, require_binary, sha256_hex, to_toml

EXAMPLES = sorted((REPO_ROOT / "config" / "examples").glob("*.toml"))


def molt(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    binary = require_binary(MOLT_BIN, "molt binary")
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [binary, *map(str, args)], capture_output=True, text=True, timeout=30, check=False, env=full_env
    )


def referenced_env_vars(example: Path) -> list[str]:
    """Environment variables an example config reads its secrets from."""
    config = tomllib.loads(example.read_text())
    names = [name for provider in config.get("providers", []) for name in provider.get("keys_env", [])]
    jwt = config.get("auth", {}).get("jwt", {})
    if "secret_env" in jwt:
        names.append(jwt["secret_env"])
    if "token_env" in config.get("control_plane", {}):
        names.append(config["control_plane"]["token_env"])
    return names


def validate(config: dict[str, Any] | str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "candidate.toml"
    path.write_text(to_toml(config))
    return molt("dataplane", "--validate", "--config", path)


def field_path(*parts: str | int) -> str:
    """A regex for a field path such as models[1].provider (also accepts models.1.provider)."""
    pattern = ""
    for part in parts:
        if isinstance(part, int):
            pattern += rf"(\[{part}\]|\.{part})"
        else:
            pattern += ("\\." if pattern else "") + re.escape(part)
    return pattern


def test_generated_config_is_valid(world: World, tmp_path: Path) -> None:
    result = validate(world.config(tmp_path), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "config OK" in result.stdout


def test_every_error_is_listed_with_its_field_path(world: World, tmp_path: Path) -> None:
    config = copy.deepcopy(world.config(tmp_path))
    config["keys"][0]["sha256"] = "not-a-sha256"
    config["keys"][1]["id"] = config["keys"][0]["id"]  # duplicate id
    config["providers"][0]["keys"] = []
    config["models"][0]["fallbacks"] = ["no-such-model"]
    config["models"][1]["provider"] = "no-such-provider"
    expected = [
        field_path("keys", 0, "sha256"),
        field_path("keys", 1, "id"),
        field_path("providers", 0, "keys"),
        field_path("models", 0, "fallbacks") + r"(\[0\]|\.0)?",
        field_path("models", 1, "provider"),
    ]

    result = validate(config, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    error_lines = [line for line in output.splitlines() if re.match(r"^\S+: \S", line)]
    for path in expected:
        assert any(re.match(rf"^{path}: ", line) for line in error_lines), f"no `{path}: ...` line in:\n{output}"
    assert "config OK" not in output


@pytest.mark.parametrize(
    ("text", "mentions"),
    [
        ("version = 1\n[server\nlisten = ", None),
        ('version = 1\n[server]\nlisten = "127.0.0.1:1"\ngrace_period = "5 parsecs"\n', "grace_period"),
    ],
    ids=["unparseable", "bad-duration"],
)
def test_malformed_config_fails(tmp_path: Path, text: str, mentions: str | None) -> None:
    result = validate(text, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert output.strip(), "no explanation printed"
    if mentions:
        assert mentions in output


@pytest.mark.parametrize(
    "example",
    EXAMPLES or [pytest.param(None, marks=pytest.mark.skip(reason="config/examples/ has no *.toml yet"))],
    ids=[p.name for p in EXAMPLES] or ["none"],
)
def test_example_configs_validate(example: Path) -> None:
    # Validation answers "would this config start?", so the secrets it names
    # in the environment must be there: first without them, then with them.
    names = referenced_env_vars(example)
    unset = {name: "" for name in names}
    if names:
        missing = molt("dataplane", "--validate", "--config", example, env=unset)
        assert missing.returncode == 1
        assert all(name in missing.stderr for name in names), missing.stderr
    dummies = {name: f"dummy-secret-for-{name.lower()}-0123456789abcdef" for name in names}
    result = molt("dataplane", "--validate", "--config", example, env=dummies)
    assert result.returncode == 0, f"{example}:\n{result.stdout}{result.stderr}"
    assert "config OK" in result.stdout


def test_key_new_prints_a_key_and_its_sha256() -> None:
    result = molt("key", "new")
    assert result.returncode == 0, result.stderr
    fields = dict(line.split(": ", 1) for line in result.stdout.strip().splitlines())
    assert set(fields) == {"key", "sha256"}
    assert re.fullmatch(r"molt_sk_[A-Za-z0-9_-]{43}", fields["key"])
    assert fields["sha256"] == sha256_hex(fields["key"])
    assert molt("key", "new").stdout != result.stdout, "two keys in a row were equal"


def controlplane_config(tmp_path: Path, listen: str = "127.0.0.1:9700") -> Path:
    path = tmp_path / "controlplane.toml"
    path.write_text(
        to_toml(
            {
                "listen": listen,
                "database_url": f"sqlite://{tmp_path / 'cp.db'}?mode=rwc",
                "secrets": {"encryption_key_env": "MOLT_T_KEY", "dataplane_token_env": "MOLT_T_DP"},
                "jwt": {"issuer": "molt-t", "secret_env": "MOLT_T_JWT"},
            }
        )
    )
    return path


CP_SECRETS = {"MOLT_T_KEY": "ab" * 32, "MOLT_T_DP": "dp-token-of-16-chars+", "MOLT_T_JWT": "j" * 32}


def test_controlplane_validate_lists_every_error_with_its_field(tmp_path: Path) -> None:
    path = controlplane_config(tmp_path, listen="nowhere")
    unset = {name: "" for name in CP_SECRETS}
    result = molt("controlplane", "--validate", "--config", path, env=unset)
    assert result.returncode == 1, result.stdout + result.stderr
    for expected in ("listen:", "secrets.encryption_key_env", "secrets.dataplane_token_env", "jwt.secret_env"):
        assert expected in result.stderr, f"{expected!r} not in:\n{result.stderr}"
    assert not (tmp_path / "cp.db").exists(), "--validate must not touch the database"

    result = molt("controlplane", "--validate", "--config", controlplane_config(tmp_path), env=CP_SECRETS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "config OK" in result.stdout


def test_controlplane_migrate_applies_every_migration_and_exits(tmp_path: Path) -> None:
    path = controlplane_config(tmp_path)
    result = molt("controlplane", "--migrate", "--config", path, env=CP_SECRETS)
    assert result.returncode == 0, result.stdout + result.stderr
    migrations = sorted((REPO_ROOT / "controlplane" / "migrations").glob("*.sql"))
    with sqlite3.connect(tmp_path / "cp.db") as db:
        applied = db.execute("SELECT COUNT(*) FROM _sqlx_migrations WHERE success").fetchone()[0]
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert applied == len(migrations) > 0
    assert {"users", "bots", "usage_events"} <= tables, tables


@pytest.fixture
def health_server() -> Iterator[tuple[str, dict[str, int]]]:
    """An HTTP server answering every GET with the status in `state["status"]`."""
    state = {"status": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            self.send_response(state["status"])
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/readyz", state
    finally:
        server.shutdown()


def test_probe_exits_zero_only_on_a_2xx(health_server: tuple[str, dict[str, int]]) -> None:
    url, state = health_server
    assert molt("probe", url).returncode == 0
    state["status"] = 503
    result = molt("probe", url)
    assert result.returncode == 1 and "503" in result.stderr, result.stderr
    result = molt("probe", f"http://127.0.0.1:{refused_port()}/readyz", "--timeout", "1s")
    assert result.returncode == 1 and "request failed" in result.stderr, result.stderr
