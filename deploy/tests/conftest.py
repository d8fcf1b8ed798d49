"""Shared pieces of the deploy tests: paths, processes, ports, the validator as a subprocess, containers.

Run by deploy/check.sh with its venv's tools on PATH, MOLT_BIN and MOLT_NODE_MODULES set.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

DEPLOY = Path(__file__).resolve().parents[1]
REPO = DEPLOY.parent
sys.path.insert(0, str(DEPLOY))

import validate  # noqa: E402, F401 - deploy/validate.py, for the tests (after the path is set)

MOLT_BIN = Path(os.environ.get("MOLT_BIN") or REPO / "target" / "debug" / "molt")
T = TypeVar("T")


# Every port free_port() has handed out in this run. Containers on the host
# network cannot report the port they bound (podman has no ready file), so
# the tests pick ports before anything binds them; the kernel may then hand
# the same free port to two calls in a row (a CI run once gave a data plane's
# admin port to the control plane as well). Never twice from here.
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_until(probe: Callable[[], T | None], what: str, timeout: float = 30.0, interval: float = 0.1) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def answers(url: str, status: int = 200) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == status
    except httpx.TransportError:
        return False


class Process:
    """A child process logging to a file; `kill()` at teardown."""

    def __init__(self, argv: list[str | Path], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None):
        self.argv = [str(a) for a in argv]
        self.log = log
        self._out = open(log, "wb")  # noqa: SIM115 - closed in kill()
        self.popen = subprocess.Popen(
            self.argv, stdout=self._out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, cwd=cwd,
        )  # fmt: skip

    def alive(self) -> bool:
        return self.popen.poll() is None

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        if self.alive():
            self.popen.kill()
            self.popen.wait(timeout=10)
        self._out.close()


def require_molt() -> Path:
    if not MOLT_BIN.is_file():
        pytest.fail(f"no molt binary at {MOLT_BIN} (deploy/check.sh sets MOLT_BIN)")
    return MOLT_BIN


def run_validator(kind: str, *args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`deploy/validate.py KIND ARGS...` as check.sh runs it."""
    return subprocess.run(
        [sys.executable, DEPLOY / "validate.py", kind, *map(str, args)],
        capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})},
    )  # fmt: skip


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit(path: Path, old: str, new: str) -> None:
    """Replace exactly one occurrence of `old` (so a test that no longer breaks anything fails loudly)."""
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in {path}"
    path.write_text(text.replace(old, new))


def service_url(variable: str) -> str:
    """DATABASE_URL / REDIS_URL: required under CI=true, else the test is skipped, loudly."""
    value = os.environ.get(variable)
    if not value:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{variable} is not set (CI=true)")
        pytest.skip(f"{variable} is not set: this test needs the real server (see .ci/run)")
    return value


# --------------------------------------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------------------------------------


def container_env() -> dict[str, str]:
    """The environment deploy/containers.sh sets up (Molt's own storage and engine settings)."""
    done = subprocess.run(
        ["bash", "-c", f"source {DEPLOY / 'containers.sh'} && env -0"], capture_output=True, check=True
    )
    env = dict(item.split("=", 1) for item in done.stdout.decode().split("\0") if "=" in item)
    return {k: env[k] for k in ("CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF")}


class Podman:
    """podman with deploy/containers.sh's settings; removes the containers it started."""

    def __init__(self) -> None:
        self.env = {**os.environ, **container_env()}
        self.started: list[str] = []

    def __call__(self, *args: str | Path, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["podman", *map(str, args)], capture_output=True, text=True, env=self.env, timeout=timeout
        )
        if check and done.returncode != 0:
            raise AssertionError(f"podman {' '.join(map(str, args))} exited {done.returncode}:\n{done.stderr}")
        return done

    def run_detached(self, name: str, *args: str | Path) -> str:
        """`podman run -d` on the host network, under the name given (unique per test)."""
        self.started.append(name)
        self("run", "-d", "--name", name, "--network", "host", *args)
        return name

    def logs(self, name: str) -> str:
        done = self("logs", name, check=False)
        return done.stdout + done.stderr

    def alive(self, name: str) -> bool:
        done = self("inspect", "--format", "{{.State.Running}}", name, check=False)
        return done.stdout.strip() == "true"

    def cleanup(self) -> None:
        for name in self.started:
            self("rm", "-f", "-t", "2", name, check=False)


@pytest.fixture
def podman() -> Iterator[Podman]:
    if not shutil.which("podman") or not shutil.which("buildah"):
        pytest.fail("podman and buildah are needed (deploy/check.sh installs them)")
    p = Podman()
    try:
        yield p
    finally:
        p.cleanup()


@pytest.fixture(scope="session")
def molt_image() -> Iterator[str]:
    """The image deploy/docker/build-local.sh builds from $MOLT_BIN, unique to this run, removed afterwards."""
    image = f"localhost/molt:ci-{uuid.uuid4().hex[:10]}"
    env = {**os.environ, **container_env()}
    done = subprocess.run(
        [DEPLOY / "docker" / "build-local.sh", require_molt(), image],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, f"build-local.sh failed:\n{done.stdout}\n{done.stderr}"
    try:
        yield image
    finally:
        subprocess.run(["podman", "rmi", "-f", image], capture_output=True, env=env, check=False)
