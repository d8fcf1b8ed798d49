#!/usr/bin/env bash
# syscalls.sh: system calls per request and per SSE stream of the Molt data
# plane, counted by `strace -c -f` over short closed-loop runs.
#
# What it owns: the mock provider and one data plane (1 worker thread) on
# 127.0.0.1:176xx, strace attached to the data plane for each scenario
# (`chat-throughput`, `chat-sse-throughput`, shortened to SECONDS_PER_RUN
# with 8 connections), and a table of calls per request or stream by
# system call. strace slows the proxy, so the counts are what matter here,
# not the rates; compare.sh stays the measure of time.
#
# Usage: loadtest/syscalls.sh            (about 1 minute after the build)
# Knobs: MOLT (a prebuilt binary), SECONDS_PER_RUN (default 4), KEEP=1.
set -euo pipefail
# shellcheck source=loadtest/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MOCK_PORT=17601
MOLT_PORT=17680
MOLT_ADMIN_PORT=17691
MASTER_KEY=sk-master-syscalls
RUN_SECONDS=${SECONDS_PER_RUN:-4}
PROXY_WORKERS=1

need_tools jq curl strace
ports_free $MOCK_PORT $MOLT_PORT $MOLT_ADMIN_PORT
build_molt
start_mock $MOCK_PORT
new_client_key
start_dataplane molt $MOLT_PORT $MOLT_ADMIN_PORT $MOCK_PORT $MASTER_KEY
wait_for "data plane route" chat_ok "http://127.0.0.1:$MOLT_PORT$CHAT"

# count SCENARIO: strace the data plane over one short run of SCENARIO;
# prints "calls-per-request syscall" lines, the total first.
count() {
    local scenario=$1 strace_pid requests
    short_scenario "$scenario" "$RUN_SECONDS" 8
    strace -c -f -p "$DP_PID" -o "$WORK/$scenario.strace" 2>/dev/null &
    strace_pid=$!
    sleep 1
    "$MOLT" load --scenario "$WORK/$scenario.toml" --target "molt=http://127.0.0.1:$MOLT_PORT$CHAT" \
        --header "authorization: Bearer $CLIENT_KEY" --json >"$WORK/$scenario.json"
    sleep 0.5
    kill -INT "$strace_pid"
    wait "$strace_pid" 2>/dev/null || true
    requests=$(jq '[.targets[].ok] | add' "$WORK/$scenario.json")
    ((requests > 0)) || die "no request of $scenario succeeded"
    # strace -c rows: % time, seconds, usecs/call, calls, [errors,] syscall.
    awk -v n="$requests" '
        /^-/ || /^%/ || NF < 5 { next }
        $NF == "total" { total = $4; next }
        { printf "%.2f %s\n", $4 / n, $NF }
        END { printf "%.2f TOTAL\n", total / n }
    ' "$WORK/$scenario.strace" | sort -k1,1 -g -r
    log "$scenario: $requests requests counted"
}

log "counting (strace -c -f, $RUN_SECONDS s per scenario)"
count chat-throughput >"$WORK/requests.txt"
count chat-sse-throughput >"$WORK/streams.txt"

cat <<EOF

## System calls of the data plane ($(date -u +%Y-%m-%dT%H:%MZ), strace -c -f, 1 worker thread)

| per non-streaming request | | per 20-chunk SSE stream | |
|---|---:|---|---:|
EOF
paste -d' ' <(head -8 "$WORK/requests.txt") <(head -8 "$WORK/streams.txt") |
    awk '{ printf "| %s | %s | %s | %s |\n", $2, $1, $4, $3 }'
