#!/usr/bin/env bash
# ab.sh: before and after. Two builds of `molt` side by side as data planes
# in one run, with nginx as the fixed reference, all on the same mock
# provider: closed-loop throughput (loadtest/scenarios/chat-throughput.toml)
# and each proxy's CPU time per request, the targets interleaved in rounds.
# For telling whether a change to the request path made it cheaper, when a
# compare.sh run an hour earlier would be a different machine state.
#
# Usage: loadtest/ab.sh BEFORE_BINARY AFTER_BINARY     (about 2 minutes)
#   e.g. git stash; cargo build -p molt --release; cp target/release/molt /tmp/molt-before
# Knobs: DURATION (per target, default the scenario's), ROUNDS, KEEP=1.
set -euo pipefail
# shellcheck source=loadtest/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $# == 2 ]] || die "usage: $0 BEFORE_BINARY AFTER_BINARY"
BEFORE=$1
AFTER=$2
for bin in "$BEFORE" "$AFTER"; do [[ -x $bin ]] || die "$bin is not executable"; done
MOCK_PORT=17501
BEFORE_PORT=17510
AFTER_PORT=17520
NGINX_PORT=17530
MASTER_KEY=sk-master-ab

need_tools nginx jq curl
ports_free $MOCK_PORT $BEFORE_PORT $((BEFORE_PORT + 1)) $AFTER_PORT $((AFTER_PORT + 1)) $NGINX_PORT
MOLT=$AFTER
start_mock $MOCK_PORT
new_client_key
MOLT=$BEFORE start_dataplane before $BEFORE_PORT $((BEFORE_PORT + 1)) $MOCK_PORT $MASTER_KEY
BEFORE_PID=$DP_PID
MOLT=$AFTER start_dataplane after $AFTER_PORT $((AFTER_PORT + 1)) $MOCK_PORT $MASTER_KEY
AFTER_PID=$DP_PID
start_nginx $NGINX_PORT $MOCK_PORT $MASTER_KEY 1 4096
for port in $BEFORE_PORT $AFTER_PORT $NGINX_PORT; do
    wait_for "proxy on $port" chat_ok "http://127.0.0.1:$port$CHAT"
done
NGINX_WORKERS=$(pgrep -P "$NGINX_PID" | tr '\n' ' ')

# Whichever build runs second in a round does a little better (a few
# percent, seen with the same binary in both slots), so the run is made
# twice, once in each order, and both are printed.
# run ORDER...: one interleaved run with the targets in this order; writes
# $WORK/ab-<first>.json with each target's CPU ticks added.
run() {
    local targets=() name port pid ticks0=() ticks1=() i=0
    for name in "$@"; do
        case $name in
        before) port=$BEFORE_PORT ;;
        after) port=$AFTER_PORT ;;
        nginx) port=$NGINX_PORT ;;
        esac
        targets+=(--target "$name=http://127.0.0.1:$port$CHAT")
    done
    pids() { case $1 in before) echo "$BEFORE_PID" ;; after) echo "$AFTER_PID" ;; nginx) echo "$NGINX_WORKERS" ;; esac }
    # shellcheck disable=SC2046 # a list of pids
    for name in "$@"; do ticks0+=("$(cpu_ticks $(pids "$name"))"); done
    log "closed-loop throughput: $*"
    "$MOLT" load --scenario "$SCENARIOS/chat-throughput.toml" "${targets[@]}" \
        --header "authorization: Bearer $CLIENT_KEY" ${DURATION:+--duration "$DURATION"} ${ROUNDS:+--rounds "$ROUNDS"} \
        --json >"$WORK/ab-$1.raw.json"
    # shellcheck disable=SC2046
    for name in "$@"; do ticks1+=("$(cpu_ticks $(pids "$name"))"); done
    local cpu='{}'
    for name in "$@"; do
        cpu=$(jq --arg n "$name" --argjson t $((ticks1[i] - ticks0[i])) '. + {($n): $t}' <<<"$cpu")
        i=$((i + 1))
    done
    jq --argjson cpu "$cpu" '.cpu_ticks = $cpu' "$WORK/ab-$1.raw.json" >"$WORK/ab-$1.json"
}
run before after nginx
run after before nginx

cat <<EOF

## Before / after ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, one worker each, load $(cut -d' ' -f1-3 /proc/loadavg))

before: \`$BEFORE\`; after: \`$AFTER\`. $(jq -r '"\(.connections) workers per target, \(.duration_s)s in \(.rounds) interleaved rounds"' "$WORK/ab-before.json"), run twice: before first, then after first.

EOF
jq -r -s --argjson hz "$(getconf CLK_TCK)" '
  def f1: (. * 10 | round) / 10 | tostring;
  def f3: (. * 1000 | round) / 1000 | tostring;
  def row($n): [.[] | . as $run | (.targets[] | select(.name == "nginx") | .achieved_rate) as $ng
      | .targets[] | select(.name == $n)
      | {rps: .achieved_rate, p50: .latency.p50, p99: .latency.p99, vs: (.achieved_rate / $ng),
         cpu: ($run.cpu_ticks[$n] / $hz * 1e6 / (.requests + .warmup_requests)), errors: (.requests - .ok)}];
  def both(f): map(f) | join(" / ");
  "| target | req/s (run 1 / run 2) | errors | p50 ms | p99 ms | req/s ÷ nginx | CPU µs/request |",
  "|---|---:|---:|---:|---:|---:|---:|",
  (. as $runs | ("before", "after", "nginx") as $n | $runs | row($n) as $r |
   "| \($n) | \($r | both(.rps | round | tostring)) | \($r | both(.errors | tostring)) | \($r | both(.p50 | f3)) | \($r | both(.p99 | f3)) | \($r | both(.vs * 100 | round / 100 | tostring)) | \($r | both(.cpu | f1)) |")
' "$WORK/ab-before.json" "$WORK/ab-after.json"
echo
echo "CPU: utime+stime over each run (nginx: its worker) divided by the requests that process served, warm-up included."
