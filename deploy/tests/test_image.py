"""The image CI builds without a registry (deploy/docker/build-local.sh: FROM scratch, the molt binary and the
libraries ldd lists) runs under podman as a data plane, serving a proxied request to a mock provider on the host,
and as a control plane, with a read-only root, as its non-root user, writing only to its volume and /tmp.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
from pathlib import Path

import httpx
from conftest import Podman, Process, answers, free_port, require_molt, wait_until

UID = 65532


def state_dir(path: Path) -> Path:
    """A host directory for the image's /var/lib/molt, owned by its user as a fresh volume would be."""
    path.mkdir(parents=True)
    os.chown(path, UID, UID)
    return path


def test_image_metadata(podman: Podman, molt_image: str) -> None:
    (image,) = json.loads(podman("image", "inspect", molt_image).stdout)
    config = image["Config"]
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["/usr/local/bin/molt"]
    assert set(config["Volumes"]) == {"/var/lib/molt", "/tmp"}
    labels = config["Labels"]
    assert labels["org.opencontainers.image.title"] == "molt"
    assert labels["org.opencontainers.image.version"] and labels["org.opencontainers.image.revision"]
    assert podman("run", "--rm", "--network", "host", "--read-only", molt_image, "--version").stdout.startswith("molt ")


def test_image_as_data_plane_proxies_a_request(podman: Podman, molt_image: str, tmp_path: Path) -> None:
    mock_port, port, admin = free_port(), free_port(), free_port()
    mock = Process([require_molt(), "mock-provider", "--listen", f"127.0.0.1:{mock_port}"], tmp_path / "mock.log")
    try:
        master = "sk-image-master-" + secrets.token_hex(8)
        client_key = "molt_sk_" + secrets.token_urlsafe(32)
        config = tmp_path / "config"
        config.mkdir()
        (config / "dataplane.toml").write_text(
            f"""version = 1
[server]
listen = "127.0.0.1:{port}"
threads = 1
grace_period = "2s"
[admin]
listen = "127.0.0.1:{admin}"
[usage]
file = "/var/lib/molt/usage.jsonl"
[[keys]]
id = "image-test"
user = "image-user"
sha256 = "{hashlib.sha256(client_key.encode()).hexdigest()}"
[[providers]]
name = "mock"
kind = "openai"
base_url = "http://127.0.0.1:{mock_port}/v1"
keys_env = ["MOLT_T_MASTER"]
[[models]]
name = "gpt-4o-mini"
provider = "mock"
"""
        )
        state = state_dir(tmp_path / "state")
        name = podman.run_detached(
            f"molt-image-dp-{port}", "--read-only", "-v", f"{config}:/etc/molt:ro", "-v", f"{state}:/var/lib/molt",
            "-e", f"MOLT_T_MASTER={master}", molt_image, "dataplane", "--config", "/etc/molt/dataplane.toml",
        )  # fmt: skip

        def ready() -> bool:
            assert podman.alive(name), f"the data plane container exited:\n{podman.logs(name)}"
            return answers(f"http://127.0.0.1:{admin}/readyz")

        wait_until(ready, "the containerised data plane's /readyz", timeout=30)
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]},
            headers={"authorization": f"Bearer {client_key}", "x-request-id": "image-test-1"},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"]
        (seen,) = httpx.get(f"http://127.0.0.1:{mock_port}/_mock/requests", timeout=5).json()
        assert seen["authorization"] == f"Bearer {master}", "the master key replaces the client's"
        assert client_key not in json.dumps(seen)
        metrics = httpx.get(f"http://127.0.0.1:{admin}/metrics", timeout=5).text
        assert (
            'molt_requests_total{model="gpt-4o-mini",provider="mock",route="chat.completions",status="200"} 1'
            in metrics
        )
        # Usage written on the volume (the root is read-only), by the image's user.
        usage = state / "usage.jsonl"
        wait_until(
            lambda: usage.is_file() and "image-test-1" in usage.read_text(), "the usage line on the volume", timeout=10
        )
        assert usage.stat().st_uid == UID
        # SIGTERM drains and exits cleanly.
        podman("stop", "-t", "10", name)
        (state_after,) = json.loads(podman("inspect", name).stdout)
        assert state_after["State"]["ExitCode"] == 0, podman.logs(name)
    finally:
        mock.kill()


def test_image_as_control_plane_migrates_and_answers(podman: Podman, molt_image: str, tmp_path: Path) -> None:
    port = free_port()
    admin_token = "molt-admin-" + secrets.token_hex(16)
    config = tmp_path / "config"
    config.mkdir()
    (config / "controlplane.toml").write_text(
        f"""listen = "127.0.0.1:{port}"
database_url = "sqlite:///var/lib/molt/controlplane.db?mode=rwc"
[secrets]
encryption_key_env = "MOLT_ENCRYPTION_KEY"
dataplane_token_env = "MOLT_DATAPLANE_TOKEN"
bootstrap_admin_token_env = "MOLT_ADMIN_TOKEN"
[jwt]
issuer = "molt-image"
secret_env = "MOLT_JWT_SECRET"
"""
    )
    state = state_dir(tmp_path / "state")
    env = {"MOLT_ENCRYPTION_KEY": secrets.token_hex(32), "MOLT_DATAPLANE_TOKEN": "dp-" + secrets.token_hex(16),
           "MOLT_ADMIN_TOKEN": admin_token, "MOLT_JWT_SECRET": secrets.token_hex(32)}  # fmt: skip
    run_args = ["--read-only", "-v", f"{config}:/etc/molt:ro", "-v", f"{state}:/var/lib/molt"]
    for name, value in env.items():
        run_args += ["-e", f"{name}={value}"]
    command = ["controlplane", "--config", "/etc/molt/controlplane.toml"]
    migrated = podman("run", "--rm", "--network", "host", *run_args, molt_image, *command, "--migrate")
    assert "database migrations applied" in migrated.stderr + migrated.stdout
    assert (state / "controlplane.db").stat().st_uid == UID
    name = podman.run_detached(f"molt-image-cp-{port}", *run_args, molt_image, *command)

    def healthy() -> bool:
        assert podman.alive(name), f"the control plane container exited:\n{podman.logs(name)}"
        return answers(f"http://127.0.0.1:{port}/healthz")

    wait_until(healthy, "the containerised control plane's /healthz", timeout=30)
    # The healthcheck compose uses works inside the image (no shell, no curl).
    probe = podman("exec", name, "/usr/local/bin/molt", "probe", f"http://127.0.0.1:{port}/healthz", check=False)
    assert probe.returncode == 0, probe.stderr
    user = httpx.post(
        f"http://127.0.0.1:{port}/api/v1/users",
        json={"email": "image@example.com"},
        headers={"authorization": f"Bearer {admin_token}"},
        timeout=10,
    )
    assert user.status_code == 201, user.text
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert "molt_cp_snapshot_version" in metrics and 'route="/api/v1/users",status="201"' in metrics
    top = podman("top", name, "huser", check=False).stdout
    assert str(UID) in top, f"the control plane does not run as {UID}:\n{top}"


def test_build_local_refuses_a_missing_binary(tmp_path: Path) -> None:
    from conftest import DEPLOY

    done = subprocess.run([DEPLOY / "docker" / "build-local.sh", tmp_path / "nothing"], capture_output=True, text=True)
    assert done.returncode != 0 and "no molt binary" in done.stderr
