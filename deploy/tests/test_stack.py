"""The production-shaped stack of deploy/compose/compose.yaml, run for real under podman.

The molt services (migrate, controlplane, dataplane-a, dataplane-b) are started from `docker-compose config`'s own
rendering of compose.yaml: the same command, environment (secrets from an env file), user, read-only root, tmpfs,
dropped capabilities, no-new-privileges, volumes and healthcheck. What differs is only what this machine imposes:
registries are unreachable, so PostgreSQL and Redis are the machine's own (a database of our own, `molt_stack_ci`,
recreated each run, and Redis database 11); containers share the host network, so the configs' addresses
(`controlplane:9700`, `redis:6379`, listeners) become loopback ports of our own; open files are capped at this
VM's hard limit (and processes at deploy/containers.sh's 4096). Then: a request through each data plane, their
usage in PostgreSQL exactly once per request id, and a per-user limit that holds across both data planes through
the shared Redis.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
from conftest import (
    DEPLOY,
    Podman,
    Process,
    answers,
    copy_tree,
    edit,
    free_port,
    require_molt,
    service_url,
    validate,
    wait_until,
)

COMPOSE = DEPLOY / "compose"
DATABASE = "molt_stack_ci"
REDIS_DB = 11
UID = 65532
LIMIT = 10  # requests per minute of the limited user


def psql(admin_url: str, sql: str, database: str | None = None) -> str:
    url = urlparse(admin_url)
    if database:
        url = url._replace(path=f"/{database}")
    done = subprocess.run(
        ["psql", url.geturl(), "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql], capture_output=True, text=True
    )
    assert done.returncode == 0, f"psql {sql!r}: {done.stderr}"
    return done.stdout.strip()


@dataclass
class Stack:
    cp_url: str
    admin: dict[str, str]
    dataplanes: dict[str, tuple[str, str]]  # name -> (client URL, admin URL)
    mock_url: str
    master: str
    database_url: str

    def api(self, method: str, path: str, body: Any = None, expect: int = 201) -> Any:
        r = httpx.request(method, f"{self.cp_url}/api/v1{path}", json=body, headers=self.admin, timeout=10)
        assert r.status_code == expect, f"{method} {path}: {r.status_code} {r.text}"
        return r.json()


def compose_services(env_file: Path) -> dict[str, Any]:
    done = validate.compose_config(COMPOSE, env_file, "--format", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["services"]


def podman_args(service: dict[str, Any], volumes: dict[str, Path]) -> list[str]:
    """`podman run` options for one compose service, read off docker-compose's rendering of it."""
    args = ["--user", service["user"]]
    if service.get("read_only"):
        args.append("--read-only")
    for path in service.get("tmpfs", []):
        args += ["--tmpfs", path]
    for cap in service.get("cap_drop", []):
        args += ["--cap-drop", cap]
    for opt in service.get("security_opt", []):
        args += ["--security-opt", opt]
    hard = int(subprocess.run(["bash", "-c", "ulimit -Hn"], capture_output=True, text=True).stdout)
    ulimits = service.get("ulimits", {})
    for name, limit in ulimits.items():
        soft, hard_wanted = (limit, limit) if isinstance(limit, int) else (limit["soft"], limit["hard"])
        args += ["--ulimit", f"{name}={min(soft, hard)}:{min(hard_wanted, hard)}"]
    if ulimits and "nproc" not in ulimits:
        # Given any --ulimit, podman drops containers.conf's defaults, and its own nproc is more than runc may set
        # here (see deploy/containers.sh).
        args += ["--ulimit", "nproc=4096:4096"]
    for name, value in (service.get("environment") or {}).items():
        args += ["-e", f"{name}={value}"]
    for volume in service.get("volumes", []):
        source = volumes[volume["source"] if volume["type"] == "volume" else Path(volume["source"]).name]
        args += ["-v", f"{source}:{volume['target']}{':ro' if volume.get('read_only') else ''}"]
    return args


def healthcheck(podman: Podman, name: str, service: dict[str, Any], port: tuple[int, int]) -> bool:
    """Run the service's compose healthcheck command inside its container, its port moved as the config's was."""
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD", test
    listen, moved = port
    command = [arg.replace(f"127.0.0.1:{listen}/", f"127.0.0.1:{moved}/") for arg in test[1:]]
    assert command != test[1:], f"{test} does not probe port {listen}"
    return podman("exec", name, *command, check=False).returncode == 0


@pytest.fixture
def stack(podman: Podman, molt_image: str, tmp_path: Path) -> Iterator[Stack]:
    admin_db = service_url("DATABASE_URL")
    redis = urlparse(service_url("REDIS_URL"))
    psql(admin_db, f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    psql(admin_db, f"CREATE DATABASE {DATABASE}")
    db = urlparse(admin_db)
    database_url = db._replace(path=f"/{DATABASE}").geturl()

    mock_port, cp_port = free_port(), free_port()
    mock = Process([require_molt(), "mock-provider", "--listen", f"127.0.0.1:{mock_port}"], tmp_path / "mock.log")
    env_file = tmp_path / ".env"
    admin_token = "admin-" + secrets.token_hex(16)
    env_file.write_text(
        f"MOLT_IMAGE={molt_image}\nPOSTGRES_PASSWORD={secrets.token_hex(8)}\nMOLT_ENCRYPTION_KEY={secrets.token_hex(32)}\n"
        f"MOLT_DATAPLANE_TOKEN=dp-{secrets.token_hex(16)}\nMOLT_ADMIN_TOKEN={admin_token}\nMOLT_JWT_SECRET={secrets.token_hex(32)}\n"
    )
    services = compose_services(env_file)
    assert {"postgres", "redis", "migrate", "controlplane", "dataplane-a", "dataplane-b"} <= set(services)
    run = uuid.uuid4().hex[:8]

    # The configs, with this machine's addresses in place of the compose network's.
    cp_config = copy_tree(COMPOSE / "config", tmp_path / "cp-config")
    edit(cp_config / "controlplane.toml", 'listen = "0.0.0.0:9700"', f'listen = "127.0.0.1:{cp_port}"')
    edit(cp_config / "controlplane.toml", '"postgres://molt@postgres:5432/molt"', f'"{database_url}"')
    volumes: dict[str, dict[str, Path]] = {"cp": {"config": cp_config}}
    dataplanes = {}
    admin_ports = {}
    for name in ("dataplane-a", "dataplane-b"):
        port, admin = free_port(), free_port()
        admin_ports[name] = admin
        config = copy_tree(COMPOSE / "config", tmp_path / f"{name}-config")
        edit(config / "dataplane.toml", 'listen = "0.0.0.0:8080"', f'listen = "127.0.0.1:{port}"')
        edit(config / "dataplane.toml", 'listen = "0.0.0.0:9901"', f'listen = "127.0.0.1:{admin}"')
        edit(config / "dataplane.toml", '"http://controlplane:9700"', f'"http://127.0.0.1:{cp_port}"')
        edit(
            config / "dataplane.toml",
            '"redis://redis:6379"',
            f'"redis://{redis.hostname}:{redis.port or 6379}/{REDIS_DB}"',
        )
        state = tmp_path / f"{name}-state"
        state.mkdir()
        os.chown(state, UID, UID)  # as a fresh named volume from the image would be
        volumes[name] = {"config": config, f"{name}-state": state}
        dataplanes[name] = (f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}")

    try:
        migrate = podman("run", "--rm", "--network", "host", *podman_args(services["migrate"], volumes["cp"]),
                         molt_image, *services["migrate"]["command"], timeout=120)  # fmt: skip
        assert "database migrations applied" in migrate.stderr + migrate.stdout
        cp = podman.run_detached(f"molt-stack-cp-{run}", *podman_args(services["controlplane"], volumes["cp"]),
                                 molt_image, *services["controlplane"]["command"])  # fmt: skip
        cp_url = f"http://127.0.0.1:{cp_port}"

        def cp_healthy() -> bool:
            assert podman.alive(cp), f"the control plane exited:\n{podman.logs(cp)}"
            return answers(f"{cp_url}/healthz") and healthcheck(podman, cp, services["controlplane"], (9700, cp_port))

        wait_until(cp_healthy, "the control plane's healthcheck", timeout=60)
        for name in dataplanes:
            dp = podman.run_detached(f"molt-stack-{name}-{run}", *podman_args(services[name], volumes[name]),
                                     molt_image, *services[name]["command"])  # fmt: skip

            def dp_healthy(dp: str = dp, name: str = name) -> bool:
                assert podman.alive(dp), f"{name} exited:\n{podman.logs(dp)}"
                return healthcheck(podman, dp, services[name], (9901, admin_ports[name]))

            wait_until(dp_healthy, f"{name}'s healthcheck", timeout=60)
        yield Stack(cp_url, {"authorization": f"Bearer {admin_token}"}, dataplanes, f"http://127.0.0.1:{mock_port}",
                    "sk-stack-" + secrets.token_hex(8), database_url)  # fmt: skip
    finally:
        for name in list(podman.started):
            logs = podman.logs(name)
            (tmp_path / f"{name}.log").write_text(logs)
        podman.cleanup()
        mock.kill()
        psql(admin_db, f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")


def chat(dataplane_url: str, key: str, request_id: str) -> httpx.Response:
    return httpx.post(
        f"{dataplane_url}/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]},
        headers={"authorization": f"Bearer {key}", "x-request-id": request_id},
        timeout=10,
    )


def new_user_key(stack: Stack, email: str, plan: str | None = None) -> str:
    body = {"email": email, **({"plan": plan} if plan else {})}
    user = stack.api("POST", "/users", body)
    key = stack.api("POST", "/keys", {"user_id": user["id"]})["secret"]

    def known_everywhere() -> bool:
        return all(
            httpx.get(f"{url}/v1/models", headers={"authorization": f"Bearer {key}"}, timeout=5).status_code == 200
            for url, _ in stack.dataplanes.values()
        )

    wait_until(known_everywhere, f"{email}'s key on both data planes", timeout=15)
    return key


def metric(admin_url: str, name: str) -> float:
    text = httpx.get(f"{admin_url}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.split("{")[0].split(" ")[0] == name)


def test_two_dataplanes_ship_usage_once_and_share_a_limit(stack: Stack) -> None:
    stack.api(
        "POST",
        "/providers",
        {"name": "mock", "kind": "openai", "base_url": f"{stack.mock_url}/v1", "keys": [stack.master]},
    )
    stack.api("POST", "/models", {"name": "gpt-4o-mini", "provider": "mock"})
    stack.api("POST", "/plans", {"name": "stack-limited", "limits": {"requests_per_minute": LIMIT}})

    # A request through each data plane; usage lands in PostgreSQL once per request id.
    key = new_user_key(stack, "stack-usage@example.com")
    ids = []
    for name, (url, _) in stack.dataplanes.items():
        for n in range(2):
            request_id = f"stack-{name}-{n}-{uuid.uuid4().hex[:8]}"
            response = chat(url, key, request_id)
            assert response.status_code == 200, f"{name}: {response.text}"
            assert response.headers["x-request-id"] == request_id
            ids.append(request_id)
    id_list = ",".join(f"'{i}'" for i in ids)

    def stored() -> dict[str, int] | None:
        rows = psql(
            stack.database_url,
            f"SELECT request_id, COUNT(*) FROM usage_events WHERE request_id IN ({id_list}) GROUP BY request_id",
        )
        counts = {line.split("|")[0]: int(line.split("|")[1]) for line in rows.splitlines() if line}
        return counts if len(counts) == len(ids) else None

    counts = wait_until(stored, "usage of all four requests in PostgreSQL", timeout=30)
    assert counts == {i: 1 for i in ids}, counts
    time.sleep(2)  # a duplicate from a re-sent batch would arrive within a ship interval or two
    assert stored() == {i: 1 for i in ids}
    for name, (_, admin) in stack.dataplanes.items():
        assert metric(admin, "molt_usage_shipped_total") >= 2, f"{name} shipped nothing"
        assert metric(admin, "molt_limits_redis_fallback") == 0, f"{name} does not reach Redis"

    # A per-user limit holds across both data planes: alternate between them.
    limited = new_user_key(stack, "stack-limited@example.com", plan="stack-limited")
    if time.time() % 60 > 45:
        time.sleep(61 - time.time() % 60)  # the whole burst inside one fixed minute window
    results: dict[str, list[int]] = {name: [] for name in stack.dataplanes}
    for n in range(2 * LIMIT):
        name = list(stack.dataplanes)[n % 2]
        response = chat(stack.dataplanes[name][0], limited, f"stack-limit-{n}-{uuid.uuid4().hex[:8]}")
        assert response.status_code in (200, 429), response.text
        if response.status_code == 429:
            assert response.headers.get("retry-after"), response.headers
        results[name].append(response.status_code)
    admitted = sum(codes.count(200) for codes in results.values())
    # Each data plane alone would admit LIMIT (2 x LIMIT in all); shared, a window admits the limit plus at most
    # one lease in flight per replica (ARCHITECTURE.md, "Limits across replicas").
    assert LIMIT <= admitted <= LIMIT + 2, f"{admitted} of {2 * LIMIT} admitted with a limit of {LIMIT}/min: {results}"
    assert all(429 in codes for codes in results.values()), f"a data plane never refused: {results}"
    for name, (_, admin) in stack.dataplanes.items():
        assert metric(admin, "molt_limits_redis_seconds_count") > 0, f"{name} never leased from Redis"
