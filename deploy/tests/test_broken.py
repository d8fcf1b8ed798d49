"""A deliberately broken copy of each artifact kind fails its check, with a message that says what is wrong.

Each test copies the real artifact, breaks one thing in the copy and runs the same `deploy/validate.py` check that
deploy/check.sh runs. An unbroken copy of each kind is checked once first, so each failure comes from the one edit.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import DEPLOY, copy_tree, edit, run_validator


def assert_fails(done: subprocess.CompletedProcess[str], *expected: str) -> None:
    output = done.stdout + done.stderr
    assert done.returncode != 0, f"the broken copy passed:\n{output}"
    for text in expected:
        assert text in output, f"{text!r} not in the check's output:\n{output}"


def assert_passes(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, f"the unbroken copy fails:\n{done.stdout}{done.stderr}"


_PRISTINE_CHECKED: set[str] = set()


def pristine_copy(kind: str, source: Path, tmp_path: Path, flag: str = "--dir") -> Path:
    """A copy of `source`; the first copy of each kind is checked to pass unbroken."""
    copy = copy_tree(source, tmp_path / source.name)
    if kind not in _PRISTINE_CHECKED:
        assert_passes(run_validator(kind, flag, copy))
        _PRISTINE_CHECKED.add(kind)
    return copy


# --- Helm chart ------------------------------------------------------------------------------------------------------


@pytest.fixture
def chart(tmp_path: Path) -> Path:
    return pristine_copy("chart", DEPLOY / "helm" / "molt", tmp_path, flag="--chart")


def test_a_misspelt_manifest_field_fails_kubernetes_validation(chart: Path) -> None:
    edit(chart / "templates" / "dataplane-deployment.yaml", "imagePullPolicy:", "imagePullPolicyy:")
    assert_fails(run_validator("chart", "--chart", chart), "kubernetes-validate --strict", "imagePullPolicyy")


def test_a_value_outside_the_schema_fails(chart: Path) -> None:
    edit(chart / "ci" / "minimal.yaml", "controlplane:\n", "dataplane:\n  threads: 0\ncontrolplane:\n")
    assert_fails(run_validator("chart", "--chart", chart), "minimal.yaml", "threads")


def test_a_secret_in_the_redis_url_is_refused_by_the_schema(chart: Path) -> None:
    edit(
        chart / "ci" / "minimal.yaml",
        "controlplane:\n",
        "dataplane:\n  redis:\n    url: redis://:hunter2@redis:6379\ncontrolplane:\n",
    )
    assert_fails(run_validator("chart", "--chart", chart), "redis")


def test_a_molt_config_the_chart_renders_wrong_fails_molt_validate(chart: Path) -> None:
    edit(
        chart / "templates" / "dataplane-configmap.yaml",
        'grace_period = "{{ $dp.gracePeriodSeconds }}s"',
        'grace_period = "soon"',
    )
    assert_fails(run_validator("chart", "--chart", chart), "molt dataplane --validate", "server.grace_period")


def test_a_broken_servicemonitor_fails_the_prometheus_operator_schema(chart: Path) -> None:
    edit(
        chart / "templates" / "servicemonitor.yaml",
        "      path: /metrics\n      interval: {{ $sm.interval }}\n{{- if",
        "      path: /metrics\n      interval: 30\n{{- if",
    )
    assert_fails(run_validator("chart", "--chart", chart), "ServiceMonitor", "interval")


# --- Prometheus rules ------------------------------------------------------------------------------------------------


@pytest.fixture
def monitoring(tmp_path: Path) -> Path:
    return pristine_copy("monitoring", DEPLOY / "monitoring", tmp_path)


def test_an_alert_rule_that_does_not_parse_fails_promtool(monitoring: Path) -> None:
    edit(
        monitoring / "rules" / "molt-alerts.yaml",
        "expr: molt:request_errors:ratio_rate5m > 0.05",
        "expr: molt:request_errors:ratio_rate5m >> 0.05",
    )
    assert_fails(run_validator("monitoring", "--dir", monitoring), "promtool check rules", "molt-alerts.yaml")


def test_an_alert_that_no_longer_fires_fails_its_unit_test(monitoring: Path) -> None:
    edit(
        monitoring / "rules" / "molt-alerts.yaml",
        "expr: molt:usage_spool:fill_ratio > 0.5",
        "expr: molt:usage_spool:fill_ratio > 5",
    )
    assert_fails(run_validator("monitoring", "--dir", monitoring), "promtool test rules", "MoltUsageSpoolFilling")


def test_an_alert_without_a_unit_test_fails(monitoring: Path) -> None:
    rules = monitoring / "rules" / "molt-alerts.yaml"
    untested = "      - alert: MoltUntested\n        expr: molt_cp_connected_dataplanes > 100\n"
    rules.write_text(rules.read_text() + untested + "        labels:\n          severity: ticket\n")
    assert_fails(
        run_validator("monitoring", "--dir", monitoring), "alerts without a promtool unit test", "MoltUntested"
    )


def test_a_dashboard_query_that_does_not_parse_fails(monitoring: Path) -> None:
    edit(
        monitoring / "dashboards" / "molt-dataplane.json",
        '"expr": "sum(molt_active_streams{job=~\\"$job\\"})"',
        '"expr": "sum(molt_active_streams{job=~\\"$job\\"}"',
    )
    assert_fails(
        run_validator("monitoring", "--dir", monitoring), "dashboard queries promtool cannot parse", "Active streams"
    )


def test_a_stale_generated_dashboard_fails_the_up_to_date_check(tmp_path: Path) -> None:
    # The generator's --check compares the repository's files; run it against a copy of the generator whose output
    # would differ from the committed dashboards.
    copy = copy_tree(DEPLOY / "monitoring", tmp_path / "deploy" / "monitoring")
    copy_tree(DEPLOY / "helm" / "molt" / "files", tmp_path / "deploy" / "helm" / "molt" / "files")
    edit(copy / "generate.py", '"Active streams"', '"Streams being proxied"')
    done = subprocess.run(["python3", copy / "generate.py", "--check"], capture_output=True, text=True)
    assert_fails(done, "out of date", "molt-dataplane.json")


# --- Fly -------------------------------------------------------------------------------------------------------------


@pytest.fixture
def fly(tmp_path: Path) -> Path:
    return pristine_copy("fly", DEPLOY / "fly", tmp_path)


def test_a_misspelt_fly_toml_key_fails_the_schema(fly: Path) -> None:
    edit(fly / "dataplane.fly.toml", "kill_timeout =", "kill_timout =")
    assert_fails(run_validator("fly", "--dir", fly), "check-jsonschema", "kill_timout")


def test_a_wrong_fly_toml_value_fails_the_schema(fly: Path) -> None:
    edit(fly / "controlplane.fly.toml", 'handlers = ["tls", "http"]', 'handlers = ["tls", "https"]')
    assert_fails(run_validator("fly", "--dir", fly), "check-jsonschema", "controlplane.fly.toml")


def test_a_broken_config_shipped_to_fly_fails_molt_validate(fly: Path) -> None:
    edit(fly / "dataplane.toml", 'token_env = "MOLT_DATAPLANE_TOKEN"', 'token_env = ""')
    assert_fails(run_validator("fly", "--dir", fly), "molt dataplane --validate", "control_plane.token_env")


def test_a_bot_machine_config_with_an_unknown_field_fails(fly: Path) -> None:
    edit(fly / "bot-machine.json", '"auto_destroy": false', '"auto_destroy": false, "autodestroy": true')
    assert_fails(run_validator("fly", "--dir", fly), "bot machine config", "autodestroy")


# --- Compose and images ----------------------------------------------------------------------------------------------


@pytest.fixture
def compose(tmp_path: Path) -> Path:
    return pristine_copy("compose", DEPLOY / "compose", tmp_path)


def test_a_broken_compose_file_fails_docker_compose(compose: Path) -> None:
    edit(
        compose / "compose.yaml",
        "      migrate:\n        condition: service_completed_successfully",
        "      migrate:\n        condition: service_finished",
    )
    assert_fails(run_validator("compose", "--dir", compose), "docker-compose config -q", "depends_on.migrate.condition")


def test_a_compose_service_depending_on_nothing_real_fails(compose: Path) -> None:
    edit(
        compose / "compose.yaml",
        "    depends_on:\n      postgres:\n        condition: service_healthy\n\n  controlplane:",
        "    depends_on:\n      postgresql:\n        condition: service_healthy\n\n  controlplane:",
    )
    assert_fails(run_validator("compose", "--dir", compose), "docker-compose config -q", "postgresql")


def test_a_secret_with_a_default_in_compose_fails(compose: Path) -> None:
    text = (compose / "compose.yaml").read_text()
    (compose / "compose.yaml").write_text(text.replace(":?set ", ":-").replace(" in .env}", "}"))
    assert_fails(run_validator("compose", "--dir", compose), "does not require its secrets")


def test_a_dockerfile_on_a_floating_tag_fails_hadolint(tmp_path: Path) -> None:
    copy = pristine_copy("images", DEPLOY / "docker", tmp_path)
    edit(copy / "Dockerfile", "FROM gcr.io/distroless/cc-debian12:nonroot", "FROM gcr.io/distroless/cc-debian12:latest")
    assert_fails(run_validator("images", "--dir", copy), "hadolint", "DL3007")
