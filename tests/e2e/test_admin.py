"""The admin listener: health, readiness, Prometheus metrics without per-user labels; access logs."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from harness import CHAT_MODEL, Dataplane, World, assert_no_secrets, mock_headers, new_request_id, wait_until


@pytest.fixture(scope="module")
def served(module_dataplane: Dataplane, world: World) -> str:
    """One request through the data plane, so request metrics and an access log line exist; its id."""
    world.mock.clear()
    rid = new_request_id()
    response = httpx.post(
        f"{module_dataplane.url}/v1/chat/completions",
        json={"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {world.full_key.secret}", "x-request-id": rid, **mock_headers(chunks=2)},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return rid


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_health_endpoints(module_dataplane: Dataplane, path: str) -> None:
    assert httpx.get(f"{module_dataplane.admin_url}{path}", timeout=5).status_code == 200


def test_metrics(module_dataplane: Dataplane, served: str) -> None:
    metrics = module_dataplane.metrics()
    for name in ("molt_requests_total", "molt_config_version"):
        assert re.search(rf"^{name}(\{{.*\}})? ", metrics, re.M), f"{name} missing from /metrics"
    assert module_dataplane.metric_value("molt_requests_total") >= 1
    labels = set(re.findall(r"[{,]\s*([a-zA-Z_]+)=\"", metrics))
    per_user = {"user", "user_id", "key", "key_id", "sub", "request_id"} & labels
    assert not per_user, f"per-user/per-request labels in /metrics: {per_user}"
    assert_no_secrets(metrics, "/metrics")


def test_one_access_log_line_per_request(module_dataplane: Dataplane, served: str) -> None:
    def access_lines() -> list[dict[str, object]]:
        lines = []
        for line in module_dataplane.logs().splitlines():
            if served in line and line.lstrip().startswith("{"):
                record = json.loads(line)
                if record.get("target") == "access":
                    lines.append(record)
        return lines

    wait_until(access_lines, f"an access log line for {served}", timeout=5)
    assert len(access_lines()) == 1, f"expected one JSON access line for {served}:\n{module_dataplane.logs()[-3000:]}"
