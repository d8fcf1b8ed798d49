"""Policies of the Helm chart, read off its rendered manifests for every deploy/helm/molt/ci/*.yaml values file:
probes, drain timing, hardened security contexts, writable paths only on emptyDirs, the config mounted as a
directory (hot reload), no secret in a ConfigMap, HPA and PDB, spreading, migrations before the control plane.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from conftest import DEPLOY, validate

CHART = DEPLOY / "helm" / "molt"
VALUES = sorted((CHART / "ci").glob("*.yaml"))


def render(values_file: Path) -> list[dict[str, Any]]:
    return validate.render_chart(CHART, values_file)


@pytest.fixture(params=VALUES, ids=[v.stem for v in VALUES], scope="module")
def objects(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(request.param)


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def deployment(objects: list[dict[str, Any]], component: str) -> dict[str, Any] | None:
    found = [
        d for d in of_kind(objects, "Deployment") if d["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    assert len(found) <= 1
    return found[0] if found else None


def config_of(objects: list[dict[str, Any]], plane: str) -> dict[str, Any]:
    for cm in of_kind(objects, "ConfigMap"):
        if f"{plane}.toml" in cm.get("data", {}):
            return tomllib.loads(cm["data"][f"{plane}.toml"])
    raise AssertionError(f"no ConfigMap holds {plane}.toml")


def containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return pod_spec.get("initContainers", []) + pod_spec["containers"]


def test_dataplane_probes_use_the_admin_listener_and_readiness_is_readyz(objects: list[dict[str, Any]]) -> None:
    dp = deployment(objects, "dataplane")
    assert dp is not None
    (container,) = dp["spec"]["template"]["spec"]["containers"]
    admin = next(p for p in container["ports"] if p["name"] == "admin")
    assert admin["containerPort"] == 9901
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    listen = config_of(objects, "dataplane")["admin"]["listen"]
    assert listen.endswith(":9901") and not listen.startswith("127."), "probes and scrapes reach the admin listener"


def test_drain_fits_in_the_termination_grace_period(objects: list[dict[str, Any]]) -> None:
    dp = deployment(objects, "dataplane")
    assert dp is not None
    pod = dp["spec"]["template"]["spec"]
    grace = config_of(objects, "dataplane")["server"]["grace_period"]
    grace_seconds = int(re.fullmatch(r"(\d+)s", grace).group(1))
    (container,) = pod["containers"]
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop >= 1, "the load balancer must stop sending before the drain starts"
    assert pod["terminationGracePeriodSeconds"] > pre_stop + grace_seconds


def test_every_container_is_hardened(objects: list[dict[str, Any]]) -> None:
    for workload in of_kind(objects, "Deployment"):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for c in containers(pod):
            sc = c["securityContext"]
            where = f"{workload['metadata']['name']}/{c['name']}"
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in sc["capabilities"], where
            assert sc.get("privileged") is False, where
            assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"], where


def test_molt_writes_only_to_emptydirs_and_reads_its_config_from_a_directory_mount(
    objects: list[dict[str, Any]],
) -> None:
    for workload in of_kind(objects, "Deployment"):
        pod = workload["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        for c in containers(pod):
            where = f"{workload['metadata']['name']}/{c['name']}"
            mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
            assert all("subPath" not in m for m in mounts.values()), f"{where}: a subPath mount never sees updates"
            # Writable mounts are emptyDirs; everything else is read-only.
            for path, mount in mounts.items():
                if not mount.get("readOnly"):
                    assert "emptyDir" in volumes[mount["name"]], f"{where}: {path} is writable but not an emptyDir"
            assert "/tmp" in mounts, f"{where}: Pingora's pid file and upgrade socket go to /tmp"
            config_path = Path(c["args"][c["args"].index("--config") + 1])
            config_mount = mounts[str(config_path.parent)]
            assert config_mount["readOnly"] is True
            assert "configMap" in volumes[config_mount["name"]], f"{where}: the config is a ConfigMap directory"
    dp_config = config_of(objects, "dataplane")["control_plane"]
    dp = deployment(objects, "dataplane")
    assert dp is not None
    (container,) = dp["spec"]["template"]["spec"]["containers"]
    state = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "state")
    for key in ("cache_file", "spool_dir"):
        assert dp_config[key].startswith(state + "/"), f"{key} must be on the writable state volume"


SECRET_WORDS = re.compile(r"(secret|token|password|passwd|api_key|private)", re.I)


def test_no_secret_value_in_any_configmap(objects: list[dict[str, Any]]) -> None:
    """ConfigMaps name the environment variables that hold secrets; they never hold one."""

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                here = f"{path}.{key}"
                if SECRET_WORDS.search(key) and not isinstance(value, dict | list):
                    assert key.endswith(("_env", "_file")), f"{here} holds a secret in a ConfigMap"
                    assert re.fullmatch(r"[A-Z][A-Z0-9_]*|/[\w./-]+", str(value)), f"{here} = {value!r}"
                walk(value, here)
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{path}[{i}]")
        elif isinstance(node, str) and "://" in node:
            assert urlparse(node).password is None, f"{path}: a URL with a password in a ConfigMap"

    for cm in of_kind(objects, "ConfigMap"):
        for key, text in cm.get("data", {}).items():
            if key.endswith(".toml"):
                walk(tomllib.loads(text), f"{cm['metadata']['name']}/{key}")


def test_secrets_come_from_the_existing_secret_only(objects: list[dict[str, Any]]) -> None:
    assert not of_kind(objects, "Secret"), "the chart never writes a Secret"
    for workload in of_kind(objects, "Deployment"):
        for c in containers(workload["spec"]["template"]["spec"]):
            for env in c.get("env", []):
                if SECRET_WORDS.search(env["name"]) or env["name"] in (
                    "MOLT_ENCRYPTION_KEY",
                    "PGPASSWORD",
                    "STRIPE_API_KEY",
                ):
                    assert "value" not in env, f"{env['name']} is written into the manifest"
                    assert env["valueFrom"]["secretKeyRef"]["name"], env


def test_dataplanes_autoscale_and_survive_disruptions_when_enabled(objects: list[dict[str, Any]]) -> None:
    dp = deployment(objects, "dataplane")
    assert dp is not None
    hpas = of_kind(objects, "HorizontalPodAutoscaler")
    pdbs = of_kind(objects, "PodDisruptionBudget")
    selector = dp["spec"]["selector"]["matchLabels"]
    if hpas:
        (hpa,) = hpas
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": dp["metadata"]["name"],
        }
        assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
        assert hpa["spec"]["minReplicas"] >= 2
        assert "replicas" not in dp["spec"], "the HPA owns the replica count"
    else:
        assert dp["spec"]["replicas"] >= 1
    for pdb in pdbs:
        assert pdb["spec"]["selector"]["matchLabels"] == selector
    for spread in dp["spec"]["template"]["spec"].get("topologySpreadConstraints", []):
        assert spread["labelSelector"]["matchLabels"] == selector
    # A rolling update never takes serving capacity away.
    assert dp["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_minimal_install_has_hpa_pdb_spreading_and_network_policies() -> None:
    objects = render(CHART / "ci" / "minimal.yaml")
    assert of_kind(objects, "HorizontalPodAutoscaler")
    assert of_kind(objects, "PodDisruptionBudget")
    dp = deployment(objects, "dataplane")
    assert dp is not None
    keys = {s["topologyKey"] for s in dp["spec"]["template"]["spec"]["topologySpreadConstraints"]}
    assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    policies = {p["metadata"]["name"]: p for p in of_kind(objects, "NetworkPolicy")}
    dp_policy = policies["molt-dataplane"]["spec"]["ingress"]
    admin_rules = [r for r in dp_policy if any(p["port"] == "admin" for p in r["ports"])]
    assert admin_rules and all(r.get("from") for r in admin_rules), "metrics only from the monitoring peers"
    cp_from = policies["molt-controlplane"]["spec"]["ingress"][0]["from"]
    assert {"podSelector": {"matchLabels": dp["spec"]["selector"]["matchLabels"]}} in cp_from


def test_the_controlplane_migrates_before_it_starts(objects: list[dict[str, Any]]) -> None:
    cp = deployment(objects, "controlplane")
    if cp is None:
        return  # an external control plane
    pod = cp["spec"]["template"]["spec"]
    (migrate,) = pod["initContainers"]
    (server,) = pod["containers"]
    assert migrate["args"][-1] == "--migrate" and migrate["args"][:3] == server["args"][:3]
    assert [e["name"] for e in migrate["env"]] == [e["name"] for e in server["env"]][: len(migrate["env"])]
    assert server["readinessProbe"]["httpGet"]["path"] == "/healthz"
    dp_url = config_of(objects, "dataplane")["control_plane"]["url"]
    (service,) = [s for s in of_kind(objects, "Service") if s["metadata"]["name"] == cp["metadata"]["name"]]
    assert dp_url == f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"


def test_monitoring_objects_carry_the_repositorys_rules_and_dashboards() -> None:
    objects = render(CHART / "ci" / "full.yaml")
    (rule,) = of_kind(objects, "PrometheusRule")
    shipped = {r.get("alert") or r.get("record") for g in rule["spec"]["groups"] for r in g["rules"]}
    source = {
        r.get("alert") or r.get("record")
        for f in sorted((DEPLOY / "monitoring" / "rules").glob("*.yaml"))
        for g in yaml.safe_load(f.read_text())["groups"]
        for r in g["rules"]
    }
    assert shipped == source
    monitors = of_kind(objects, "ServiceMonitor")
    assert {m["spec"]["endpoints"][0]["port"] for m in monitors} == {"admin", "http"}
    boards = [cm for cm in of_kind(objects, "ConfigMap") if cm["metadata"]["labels"].get("grafana_dashboard") == "1"]
    assert sorted(k for cm in boards for k in cm["data"]) == ["molt-controlplane.json", "molt-dataplane.json"]
    for service in of_kind(objects, "Service"):
        selector = service["spec"]["selector"].items()
        pods = [
            d
            for d in of_kind(objects, "Deployment")
            if all(d["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in selector)
        ]
        assert pods, f"Service {service['metadata']['name']} selects no pods"


def test_the_schema_refuses_credentials_in_urls_it_would_put_in_a_configmap() -> None:
    import helm_python as helm

    base = yaml.safe_load((CHART / "ci" / "minimal.yaml").read_text())
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(base)
        for bad in (
            {"dataplane": {"redis": {"url": "redis://:hunter2@redis:6379"}}},
            {"controlplane": {"database": {"url": "postgres://molt:hunter2@db:5432/molt"}}},
            {"existingSecret": ""},
        ):
            merged = {**base, **bad, "controlplane": {**base["controlplane"], **bad.get("controlplane", {})}}
            with pytest.raises(Exception, match="(?i)redis|database|existingSecret|pattern|length"):
                chart.validate_schema(merged)
