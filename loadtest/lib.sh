# lib.sh: what the load-test scripts (compare.sh, scale.sh, aiperf.sh) share:
# logging, the work directory, the processes they start and stop, tool
# installs, the release build, the client key, and the data plane and nginx
# configs they run with. Sourced, never run; the caller sets `set -euo
# pipefail` first and defines nothing of these names itself.
#
# Every process a script starts goes through `spawn`, so that `cleanup` (on
# exit, success or not) stops all of them: each with the signal it treats
# as "stop now", then SIGKILL for whatever is left after 5 s.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCENARIOS=${SCENARIOS:-$ROOT/loadtest/scenarios}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/molt/target}
CHAT=/v1/chat/completions
LOADTEST_NAME=$(basename "$0" .sh)

log() { printf '%s\n' "$LOADTEST_NAME: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# The work directory for configs, logs and reports; removed on a clean exit
# unless KEEP=1. nginx workers drop privileges: they must be able to enter it.
WORK=$(mktemp -d "/tmp/molt-$LOADTEST_NAME.XXXXXX")
chmod 755 "$WORK"

# "pid signal" pairs of everything spawned and not yet stopped.
SPAWNED=()
# spawn SIGNAL LOG COMMAND...: start COMMAND in the background with its
# output in LOG; SIGNAL is what stops it at once. The data plane (Pingora)
# drains on SIGTERM but stops on SIGINT; the mock and nginx stop on SIGTERM
# (a script's background jobs ignore SIGINT). Sets SPAWNED_PID.
spawn() {
    local signal=$1 out=$2
    shift 2
    "$@" >"$out" 2>&1 &
    SPAWNED_PID=$!
    SPAWNED+=("$SPAWNED_PID $signal")
}
stop_all() {
    local entry pid signal alive
    for entry in "${SPAWNED[@]}"; do
        read -r pid signal <<<"$entry"
        kill "-$signal" "$pid" 2>/dev/null || true
    done
    for _ in $(seq 1 50); do
        alive=0
        for entry in "${SPAWNED[@]}"; do
            if kill -0 "${entry%% *}" 2>/dev/null; then alive=1; fi
        done
        ((alive)) || break
        sleep 0.1
    done
    for entry in "${SPAWNED[@]}"; do
        kill -KILL "${entry%% *}" 2>/dev/null || true
        wait "${entry%% *}" 2>/dev/null || true
    done
    SPAWNED=()
}
cleanup() {
    local status=$?
    stop_all
    if [[ ${KEEP:-0} == 1 || $status -ne 0 ]]; then
        log "logs, configs and reports kept in $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# need_tools COMMAND...: install the Debian packages of the missing ones.
need_tools() {
    declare -A package=([nginx]=nginx [jq]=jq [curl]=curl [ss]=iproute2 [python3]=python3-venv)
    local missing=() tool
    for tool in "$@"; do
        if [[ $tool == nginx && -x /usr/sbin/nginx ]]; then continue; fi
        command -v "$tool" >/dev/null || missing+=("${package[$tool]:-$tool}")
    done
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    NGINX=$(command -v nginx || echo /usr/sbin/nginx)
}

# ports_free PORT...: fail if anything listens on one of them.
ports_free() {
    local port
    for port in "$@"; do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            die "port $port on 127.0.0.1 is in use; stop what listens there"
        fi
    done
}

# build_molt: set MOLT to the release binary, building it unless MOLT names
# a prebuilt one.
build_molt() {
    if [[ -n ${MOLT:-} ]]; then
        [[ -x $MOLT ]] || die "MOLT=$MOLT is not executable"
    else
        # What the build itself needs (Pingora's zlib-ng wants cmake), as
        # scripts/test installs it: a fresh machine has none of it.
        need_tools cmake gcc g++ pkg-config
        log "building molt (release)"
        (cd "$ROOT" && cargo build -p molt --release --quiet)
        MOLT=$CARGO_TARGET_DIR/release/molt
    fi
}

# build_floor: set FLOOR to the Pingora floor (loadtest/floor/: stock Pingora
# from crates.io, outside the workspace), building it unless FLOOR names a
# prebuilt one. Its own target directory, beside the workspace's.
build_floor() {
    if [[ -n ${FLOOR:-} ]]; then
        [[ -x $FLOOR ]] || die "FLOOR=$FLOOR is not executable"
    else
        need_tools cmake gcc g++ pkg-config
        log "building the Pingora floor (release)"
        (cd "$ROOT/loadtest/floor" && CARGO_TARGET_DIR=$CARGO_TARGET_DIR-floor cargo build --release --locked --quiet)
        FLOOR=$CARGO_TARGET_DIR-floor/release/molt-pingora-floor
    fi
}

# start_floor PORT MOCK_PORT MASTER_KEY: the floor checking CLIENT_KEY and
# injecting MASTER_KEY, with PROXY_WORKERS threads. Sets FLOOR_PID.
start_floor() {
    local port=$1 mock_port=$2 master_key=$3
    spawn INT "$WORK/floor.log" "$FLOOR" "127.0.0.1:$port" "127.0.0.1:$mock_port" \
        "$CLIENT_KEY" "$master_key" "${PROXY_WORKERS:-1}"
    FLOOR_PID=$SPAWNED_PID
}

# start_agentgateway PORT MOCK_PORT MASTER_KEY: agentgateway (AGENTGATEWAY, a
# prebuilt binary; never built here, see README) doing the floor's job: a
# plain HTTP route for /v1/ with its apiKey policy (strict: a missing or
# other key gets 401; it checks the key's SHA-256, as the data plane does,
# and removes the client's header) and its backendAuth policy putting
# "Bearer MASTER_KEY" in Authorization, to one plain HTTP/1.1 backend with
# its default pooled keep-alive, bodies streamed through. Its "ai" backend
# (provider openAI with a host override on the mock) would also do the key
# injection, but it parses and rewrites request and response bodies (model,
# token usage), which neither nginx nor the floor does; the plain route is
# the same job as theirs. PROXY_WORKERS runtime threads (config.workerThreads;
# it also keeps one admin thread, idle here). Sets AGW_PID.
start_agentgateway() {
    local port=$1 mock_port=$2 master_key=$3
    cat >"$WORK/agentgateway.yaml" <<EOF
config:
  workerThreads: ${PROXY_WORKERS:-1}
  # Its admin (localhost:15000), stats (*:15020) and readiness (*:15021)
  # listeners: off, so nothing but the proxy port listens.
  adminAddr: "off"
  statsAddr: "off"
  readinessAddr: "off"
  enableIpv6: false
  connectionTerminationDeadline: 1s
  logging:
    # Its access log is the "request" target at info; warn turns it off
    # (access_log = false for molt, access_log off for nginx).
    level: warn
binds:
- port: $port
  listeners:
  - protocol: HTTP
    routes:
    - name: v1
      matches:
      - path:
          pathPrefix: /v1/
      policies:
        apiKey:
          mode: strict
          keys:
          - keyHash: "sha256:$CLIENT_SHA"
        backendAuth:
          key:
            value: "$master_key"
      backends:
      - host: 127.0.0.1:$mock_port
EOF
    # env -i: agentgateway reads settings such as XDS_ADDRESS, CA_ADDRESS,
    # ADMIN_ADDR or WORKER_THREADS from the environment over its config; an
    # empty environment makes the file above the whole of its configuration.
    env -i "$AGENTGATEWAY" --validate-only -f "$WORK/agentgateway.yaml" >"$WORK/agentgateway-validate.log" 2>&1 ||
        die "agentgateway config rejected; see $WORK/agentgateway-validate.log"
    spawn TERM "$WORK/agentgateway.log" env -i "$AGENTGATEWAY" -f "$WORK/agentgateway.yaml"
    AGW_PID=$SPAWNED_PID
}

# agentgateway_loopback_only PORT: fail unless what listens on PORT listens
# on 127.0.0.1 only. Stock agentgateway binds its config's ports on the
# wildcard address (its local config has no bind address); the build the
# README describes binds them on loopback.
agentgateway_loopback_only() {
    local port=$1 addrs
    addrs=$(ss -Hltn "sport = :$port" | awk '{ print $4 }' | sort -u)
    [[ $addrs == "127.0.0.1:$port" ]] ||
        die "agentgateway listens on '${addrs//$'\n'/ }', not 127.0.0.1:$port only (a stock build binds the wildcard; see loadtest/README.md)"
}

# short_scenario NAME SECONDS CONNECTIONS: $WORK/NAME.toml, scenario NAME
# cut to one SECONDS-long round with CONNECTIONS and no warm-up (the
# counting scripts measure work per request, not rates).
short_scenario() {
    local name=$1 seconds=$2 connections=$3
    sed -e "s/^duration = .*/duration = \"${seconds}s\"/" -e 's/^warmup = .*/warmup = "0s"/' \
        -e 's/^rounds = .*/rounds = 1/' -e "s/^connections = .*/connections = $connections/" \
        -e "s#^body_file = \"#body_file = \"$SCENARIOS/#" \
        "$SCENARIOS/$name.toml" >"$WORK/$name.toml"
}

# wait_for WHAT COMMAND...: retry COMMAND for up to 20 s.
wait_for() {
    local what=$1
    shift
    for _ in $(seq 1 400); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.05
    done
    die "$what did not come up; see $WORK/*.log"
}

# start_mock PORT [ARGS...]: the mock provider; sets MOCK_PID.
start_mock() {
    local port=$1
    shift
    spawn TERM "$WORK/mock.log" "$MOLT" mock-provider --listen "127.0.0.1:$port" "$@"
    MOCK_PID=$SPAWNED_PID
    wait_for "mock provider" curl -sf "http://127.0.0.1:$port/_mock/health"
}

# new_client_key: a fresh molt API key in CLIENT_KEY and its SHA-256 (all
# the data plane stores) in CLIENT_SHA.
new_client_key() {
    local out
    out=$("$MOLT" key new)
    CLIENT_KEY=$(sed -n 's/^key: //p' <<<"$out")
    CLIENT_SHA=$(sed -n 's/^sha256: //p' <<<"$out")
    [[ $CLIENT_KEY == molt_sk_* && ${#CLIENT_SHA} == 64 ]] || die "unexpected 'molt key new' output"
}

# write_dataplane_config NAME PORT ADMIN_PORT MOCK_PORT MASTER_KEY [EXTRA_SERVER_TOML]:
# $WORK/NAME.toml for one data plane with PROXY_WORKERS threads, CLIENT_SHA
# as its one key, the mock as its one provider (key injection of
# MASTER_KEY), access log off; validated with `molt dataplane --validate`.
write_dataplane_config() {
    local name=$1 port=$2 admin=$3 mock_port=$4 master_key=$5 extra=${6:-}
    cat >"$WORK/$name.toml" <<EOF
version = 1

[server]
listen = "127.0.0.1:$port"
threads = ${PROXY_WORKERS:-1}
grace_period = "1s"
$extra

[admin]
listen = "127.0.0.1:$admin"

[log]
access_log = false

[[keys]]
id = "load"
user = "load"
sha256 = "$CLIENT_SHA"

[[providers]]
name = "mock"
kind = "openai"
base_url = "http://127.0.0.1:$mock_port/v1"
keys = ["$master_key"]

[[models]]
name = "gpt-4o-mini"
provider = "mock"
EOF
    "$MOLT" dataplane --config "$WORK/$name.toml" --validate >/dev/null
}

# start_dataplane NAME PORT ADMIN_PORT MOCK_PORT MASTER_KEY [EXTRA_SERVER_TOML]:
# that data plane (write_dataplane_config), started and ready. Sets DP_PID.
start_dataplane() {
    local name=$1 admin=$3
    write_dataplane_config "$@"
    spawn INT "$WORK/$name.log" "$MOLT" dataplane --config "$WORK/$name.toml"
    DP_PID=$SPAWNED_PID
    wait_for "data plane $name" curl -sf "http://127.0.0.1:$admin/readyz"
}

# start_nginx PORT MOCK_PORT MASTER_KEY WORKERS CONNECTIONS: nginx doing the
# data plane's job for the mock: the same key injection, streaming answers
# as they arrive, upstream keep-alive. Sets NGINX_PID.
start_nginx() {
    local port=$1 mock_port=$2 master_key=$3 workers=$4 connections=$5
    mkdir -p "$WORK/nginx"
    cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes $workers;
worker_rlimit_nofile $((connections + 100));
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections $connections; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx/client_body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    upstream mock {
        server 127.0.0.1:$mock_port;
        keepalive 128;
        keepalive_requests 1000000;
    }
    server {
        # reuseport: the kernel spreads connections evenly over the workers.
        listen 127.0.0.1:$port reuseport backlog=4096;
        keepalive_requests 1000000;
        client_max_body_size 16m;
        location /v1/ {
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # The same key injection the data plane does.
            proxy_set_header Authorization "Bearer $master_key";
            # Stream answers as they arrive (SSE), as the data plane does.
            proxy_buffering off;
            proxy_read_timeout 300s;
        }
    }
}
EOF
    "$NGINX" -t -q -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" 2>>"$WORK/nginx/error.log" ||
        die "nginx config rejected; see $WORK/nginx/error.log"
    spawn TERM "$WORK/nginx.log" "$NGINX" -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" -g 'daemon off;'
    NGINX_PID=$SPAWNED_PID
}
# nginx_pids: the master and its workers.
nginx_pids() { echo "$NGINX_PID $(pgrep -P "$NGINX_PID" | tr '\n' ' ')"; }

# chat_ok URL: one non-streaming chat request with CLIENT_KEY answered 200.
chat_ok() {
    curl -sf -o /dev/null -H "authorization: Bearer $CLIENT_KEY" -H 'content-type: application/json' \
        --data-binary @"$SCENARIOS/bodies/chat.json" "$1"
}

# rss_kib FIELD PID...: VmRSS or VmHWM summed, KiB.
rss_kib() {
    local field=$1 total=0 pid v
    shift
    for pid in "$@"; do
        v=$(awk -v f="$field:" '$1 == f { print $2 }' "/proc/$pid/status")
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

# cpu_ticks PID...: utime+stime summed (fields 14 and 15 of /proc/PID/stat).
cpu_ticks() {
    local total=0 pid stat f
    for pid in "$@"; do
        stat=$(<"/proc/$pid/stat")
        # The command name (field 2) may hold spaces; count from after ')'.
        read -r -a f <<<"${stat##*) }"
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}

# e2e_venv: the end-to-end tests' pinned venv (tests/e2e/requirements.txt,
# the same one scripts/test makes) in VENV, created if missing.
e2e_venv() {
    local req=$ROOT/tests/e2e/requirements.txt
    VENV="$HOME/.cache/molt/venv-$(sha256sum "$req" | cut -c1-12)"
    if [[ ! -x $VENV/bin/python ]] || ! "$VENV/bin/python" -c 'import websockets' 2>/dev/null; then
        log "creating the Python venv $VENV (pinned: tests/e2e/requirements.txt)"
        rm -rf "$VENV"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$req"
    fi
}
