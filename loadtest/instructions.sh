#!/usr/bin/env bash
# instructions.sh: CPU instructions per request and per SSE stream, counted
# by valgrind's callgrind, for the Molt data plane and the Pingora floor.
#
# What it owns: running each proxy (release builds) under callgrind against
# the mock provider, zeroing the counters after a warm-up, sending the same
# closed-loop load (`chat-throughput` and `chat-sse-throughput` scenarios,
# shortened), dumping the counters, and printing instructions per request
# and per stream, the ratio molt ÷ floor, and each one's top functions.
#
# Why instructions: callgrind counts them exactly and the same on every
# run, whatever else the machine is doing, so this comparison holds on a
# busy machine where compare.sh's CPU seconds do not. It does not see the
# kernel (syscalls count as one instruction each: `strace -c` tells those)
# nor cache misses; compare.sh on a quiet machine stays the measure of time.
#
# Usage: loadtest/instructions.sh            (about 5 minutes after the builds)
# Knobs: MOLT, FLOOR (prebuilt binaries), SECONDS_PER_RUN (default 8),
# KEEP=1 (keep the callgrind files: callgrind_annotate them).
set -euo pipefail
# shellcheck source=loadtest/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MOCK_PORT=17201
MOLT_PORT=17280
MOLT_ADMIN_PORT=17291
FLOOR_PORT=17282
MASTER_KEY=sk-master-instructions
RUN_SECONDS=${SECONDS_PER_RUN:-8}
PROXY_WORKERS=1

need_tools jq curl valgrind
ports_free $MOCK_PORT $MOLT_PORT $MOLT_ADMIN_PORT $FLOOR_PORT
build_molt
build_floor
start_mock $MOCK_PORT
new_client_key

# Short versions of the throughput scenarios: one round, a few workers (the
# proxy under callgrind runs some 50x slower), no warm-up of their own.
for name in chat-throughput chat-sse-throughput; do
    short_scenario "$name" "$RUN_SECONDS" 4
done

# measure NAME URL PID: warm up, zero the counters, run both scenarios
# against URL, dumping callgrind's counters after each; prints
# "NAME SCENARIO REQUESTS INSTRUCTIONS" lines.
measure() {
    local name=$1 url=$2 pid=$3 scenario requests file total
    for _ in $(seq 1 20); do chat_ok "$url" || die "$name did not answer"; done
    for scenario in chat-throughput chat-sse-throughput; do
        callgrind_control --zero "$pid" >/dev/null
        "$MOLT" load --scenario "$WORK/$scenario.toml" --target "$name=$url" \
            --header "authorization: Bearer $CLIENT_KEY" --json >"$WORK/$name.$scenario.json"
        callgrind_control --dump="$name.$scenario" "$pid" >/dev/null
        requests=$(jq '[.targets[].ok] | add' "$WORK/$name.$scenario.json")
        # The newest dump of this process holds the counts since the zeroing.
        file=$(ls -t "$WORK"/callgrind.out."$pid".* | head -1)
        mv "$file" "$WORK/$name.$scenario.callgrind"
        total=$(awk '/^totals:/ {print $2}' "$WORK/$name.$scenario.callgrind")
        echo "$name $scenario $requests $total"
    done
}

under_callgrind() {
    local out=$1
    shift
    spawn INT "$out" valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out.%p" \
        --dump-instr=no --collect-jumps=no "$@"
    sleep 1
}

log "molt under callgrind"
write_dataplane_config molt $MOLT_PORT $MOLT_ADMIN_PORT $MOCK_PORT $MASTER_KEY
under_callgrind "$WORK/molt.log" "$MOLT" dataplane --config "$WORK/molt.toml"
MOLT_VG=$SPAWNED_PID
for _ in $(seq 1 600); do curl -sf "http://127.0.0.1:$MOLT_ADMIN_PORT/readyz" >/dev/null && break; sleep 0.1; done
measure molt "http://127.0.0.1:$MOLT_PORT$CHAT" "$MOLT_VG" >"$WORK/counts"

log "Pingora floor under callgrind"
under_callgrind "$WORK/floor.log" "$FLOOR" "127.0.0.1:$FLOOR_PORT" "127.0.0.1:$MOCK_PORT" \
    "$CLIENT_KEY" "$MASTER_KEY" 1
FLOOR_VG=$SPAWNED_PID
for _ in $(seq 1 600); do chat_ok "http://127.0.0.1:$FLOOR_PORT$CHAT" && break; sleep 0.1; done
measure floor "http://127.0.0.1:$FLOOR_PORT$CHAT" "$FLOOR_VG" >>"$WORK/counts"

per() { awk -v n="$1" -v s="$2" '$1 == n && $2 == s { printf "%.0f", $4 / $3 }' "$WORK/counts"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
m_req=$(per molt chat-throughput)
f_req=$(per floor chat-throughput)
m_sse=$(per molt chat-sse-throughput)
f_sse=$(per floor chat-sse-throughput)
cat <<EOF

## Instructions per request and per stream ($(date -u +%Y-%m-%dT%H:%MZ), callgrind, 1 worker thread each)

| proxy | per non-streaming request | per 20-chunk SSE stream | requests / streams counted |
|---|---:|---:|---:|
| molt | $m_req | $m_sse | $(awk '$1 == "molt" { printf "%s ", $3 }' "$WORK/counts") |
| Pingora floor | $f_req | $f_sse | $(awk '$1 == "floor" { printf "%s ", $3 }' "$WORK/counts") |
| molt ÷ floor | $(ratio "$m_req" "$f_req") | $(ratio "$m_sse" "$f_sse") | |

User-space instructions only (a syscall counts as one); counted from zeroed
counters over closed-loop runs of ${RUN_SECONDS}s with 4 connections.

### Where molt's instructions per stream go (functions by self cost)

\`\`\`
$(callgrind_annotate --threshold=100 "$WORK/molt.chat-sse-throughput.callgrind" 2>/dev/null | sed -n '/^Ir/,$p' | head -30)
\`\`\`
EOF
if [[ ${KEEP:-0} != 1 ]]; then log "KEEP=1 keeps the callgrind files"; fi
