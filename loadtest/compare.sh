#!/usr/bin/env bash
# compare.sh: added latency and throughput of the Molt data plane, side by
# side with the same mock upstream reached directly, through nginx doing the
# same key injection, and through the Pingora floor (loadtest/floor/: a plain
# Pingora 0.9 proxy doing only the key check and injection, the least a
# Pingora-based proxy costs), in one run on one machine; optionally also
# through agentgateway (a Rust AI gateway, given prebuilt as AGENTGATEWAY)
# doing the same job.
#
# What it owns: building `molt` (release), starting the mock provider, a data
# plane, the floor and nginx (and agentgateway) on 127.0.0.1:17xxx, running
# the scenarios in loadtest/scenarios/ against all of them with targets
# interleaved in short rounds (so machine noise hits all alike), reading the
# data plane's and the proxies' RSS and CPU time from /proc, and printing
# markdown tables.
# Everything it starts is stopped on exit. See loadtest/README.md.
#
# Usage: loadtest/compare.sh            (about 7 minutes after the build: 3
#   for latency and throughput, 4 for memory per held connection)
# Knobs (environment): RATE, DURATION, WARMUP, ROUNDS, PROXY_WORKERS,
# MEMORY=0 (skip the memory part), MEM_STREAMS (2000),
# MOLT and FLOOR (prebuilt binaries, skip the builds), AGENTGATEWAY (a prebuilt
# agentgateway binary: adds its column; never built here, see
# loadtest/README.md), KEEP=1 (keep the work directory with logs, configs and
# JSON reports).
set -euo pipefail
# shellcheck source=loadtest/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MOCK_PORT=17001
MOLT_PORT=17080
MOLT_ADMIN_PORT=17901
NGINX_PORT=17081
FLOOR_PORT=17082
AGW_PORT=17083
# Non-streaming fixed-rate run (the brief's 1,000 req/s for ~15 s).
RATE=${RATE:-1000}
DURATION=${DURATION:-15s}
WARMUP=${WARMUP:-3s}
ROUNDS=${ROUNDS:-5}
# Worker threads of the data plane and worker processes of nginx: equal, so
# throughput compares work per core. The mock and the generator share the
# same small machine.
PROXY_WORKERS=${PROXY_WORKERS:-1}
# The provider's master key: only the proxies know it; clients send their
# molt key. The mock accepts any credential and records what it got.
MASTER_KEY=sk-master-compare

need_tools nginx jq curl ss
CLK_TCK=$(getconf CLK_TCK)
ports_free $MOCK_PORT $MOLT_PORT $MOLT_ADMIN_PORT $NGINX_PORT $FLOOR_PORT $AGW_PORT
# agentgateway is optional and only ever prebuilt (its own toolchain and a
# long build): its column is there when AGENTGATEWAY names the binary.
AGENTGATEWAY=${AGENTGATEWAY:-}
if [[ -n $AGENTGATEWAY ]]; then
    [[ -x $AGENTGATEWAY ]] || die "AGENTGATEWAY=$AGENTGATEWAY is not executable"
fi
build_molt
build_floor

start_mock $MOCK_PORT
new_client_key
start_dataplane dataplane $MOLT_PORT $MOLT_ADMIN_PORT $MOCK_PORT $MASTER_KEY
start_nginx $NGINX_PORT $MOCK_PORT $MASTER_KEY "$PROXY_WORKERS" 4096
start_floor $FLOOR_PORT $MOCK_PORT $MASTER_KEY
wait_for "nginx" chat_ok http://127.0.0.1:$NGINX_PORT$CHAT
wait_for "Pingora floor" chat_ok http://127.0.0.1:$FLOOR_PORT$CHAT
wait_for "data plane route" chat_ok http://127.0.0.1:$MOLT_PORT$CHAT
PROXIES=3
if [[ -n $AGENTGATEWAY ]]; then
    start_agentgateway $AGW_PORT $MOCK_PORT $MASTER_KEY
    wait_for "agentgateway" chat_ok http://127.0.0.1:$AGW_PORT$CHAT
    agentgateway_loopback_only $AGW_PORT
    PROXIES=4
fi

# Every proxy must have replaced the client's key with the master key.
injected=$(curl -sf http://127.0.0.1:$MOCK_PORT/_mock/requests |
    jq --argjson n $PROXIES --arg k "Bearer $MASTER_KEY" '[.[-$n:][] | select(.authorization == $k)] | length')
[[ $injected == "$PROXIES" ]] || die "a proxy did not inject the master key"
if [[ -n $AGENTGATEWAY ]]; then
    # The floor turns another key away with 401; agentgateway must too.
    status=$(curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer not-$CLIENT_KEY" \
        -H 'content-type: application/json' --data-binary @"$SCENARIOS/bodies/chat.json" \
        http://127.0.0.1:$AGW_PORT$CHAT)
    [[ $status == 401 ]] || die "agentgateway answered $status, not 401, to another client key"
fi
curl -sf -X DELETE http://127.0.0.1:$MOCK_PORT/_mock/requests >/dev/null

TARGETS=(
    --target "direct=http://127.0.0.1:$MOCK_PORT$CHAT"
    --target "molt=http://127.0.0.1:$MOLT_PORT$CHAT"
    --target "nginx=http://127.0.0.1:$NGINX_PORT$CHAT"
    --target "floor=http://127.0.0.1:$FLOOR_PORT$CHAT"
)
if [[ -n $AGENTGATEWAY ]]; then
    TARGETS+=(--target "agentgateway=http://127.0.0.1:$AGW_PORT$CHAT")
fi

# run NAME SCENARIO [overrides...]: load all the targets, note the CPU
# each proxy spent, per request it served (warm-up included).
run() {
    local name=$1 scenario=$2
    shift 2
    local np dp0 ng0 fl0 ag0=0
    np=$(nginx_pids)
    dp0=$(cpu_ticks "$DP_PID")
    fl0=$(cpu_ticks "$FLOOR_PID")
    if [[ -n $AGENTGATEWAY ]]; then ag0=$(cpu_ticks "$AGW_PID"); fi
    # shellcheck disable=SC2086 # np is a list of pids
    ng0=$(cpu_ticks $np)
    log "running $name ($(basename "$scenario") $*)"
    "$MOLT" load --scenario "$scenario" "${TARGETS[@]}" \
        --header "authorization: Bearer $CLIENT_KEY" --json "$@" >"$WORK/$name.json"
    local dp1 ng1 fl1 ag1=0
    dp1=$(cpu_ticks "$DP_PID")
    fl1=$(cpu_ticks "$FLOOR_PID")
    if [[ -n $AGENTGATEWAY ]]; then ag1=$(cpu_ticks "$AGW_PID"); fi
    # shellcheck disable=SC2086
    ng1=$(cpu_ticks $np)
    jq --argjson dp $((dp1 - dp0)) --argjson ng $((ng1 - ng0)) --argjson fl $((fl1 - fl0)) \
        --argjson ag $((ag1 - ag0)) --argjson hz "$CLK_TCK" '
        def per_request(ticks; who):
          ticks / $hz * 1e6 / ([.targets[] | select(.name == who) | .requests + .warmup_requests] | add);
        .cpu = { molt: per_request($dp; "molt"), nginx: per_request($ng; "nginx"), floor: per_request($fl; "floor") }
        | if any(.targets[]; .name == "agentgateway") then .cpu.agentgateway = per_request($ag; "agentgateway") else . end
        ' "$WORK/$name.json" >"$WORK/$name.cpu.json"
    curl -sf -X DELETE http://127.0.0.1:$MOCK_PORT/_mock/requests >/dev/null
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
run fixed "$SCENARIOS/chat.toml" --rate "$RATE" --duration "$DURATION" --warmup "$WARMUP" --rounds "$ROUNDS"
run sse "$SCENARIOS/chat-sse.toml"
run throughput "$SCENARIOS/chat-throughput.toml"
run sse_throughput "$SCENARIOS/chat-sse-throughput.toml"

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
# shellcheck disable=SC2046
NGINX_RSS=$(rss_kib VmRSS $(nginx_pids))
# shellcheck disable=SC2046
NGINX_HWM=$(rss_kib VmHWM $(nginx_pids))
DP_RSS=$(rss_kib VmRSS "$DP_PID")
DP_HWM=$(rss_kib VmHWM "$DP_PID")
FLOOR_RSS=$(rss_kib VmRSS "$FLOOR_PID")
FLOOR_HWM=$(rss_kib VmHWM "$FLOOR_PID")
if [[ -n $AGENTGATEWAY ]]; then
    AGW_RSS=$(rss_kib VmRSS "$AGW_PID")
    AGW_HWM=$(rss_kib VmHWM "$AGW_PID")
fi

# --- tables ---------------------------------------------------------------------
# fx(d): a number with exactly d decimals (jq's tostring drops trailing zeros).
JQ_DEFS='
  def fx(d): (if . < 0 then "-" else "" end) as $s
    | ((if . < 0 then -. else . end) * pow(10; d) | round) as $n
    | (pow(10; d) | round) as $p
    | $s + (($n / $p) | floor | tostring) + "." + (($n % $p) + $p | tostring | .[1:]);
  def f3: fx(3);
  def f2: fx(2);
'
fixed=$WORK/fixed.cpu.json
sse=$WORK/sse.cpu.json
tput=$WORK/throughput.cpu.json
sse_tput=$WORK/sse_throughput.cpu.json

cat <<EOF

## Molt data plane vs direct vs nginx vs the Pingora floor${AGENTGATEWAY:+ vs agentgateway} ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, proxies with $PROXY_WORKERS worker(s))

Load average before / after the runs: $LOAD_BEFORE / $LOAD_AFTER (anything else running skews every row).

### Fixed rate, non-streaming: $(jq -r '"\(.rate) req/s per target, \(.duration_s)s in \(.rounds) interleaved rounds, \(.connections) connections, \(.warmup_s)s warm-up"' "$fixed")

Latency from each request's scheduled time to the end of its response (ms).

EOF
jq -r "$JQ_DEFS"'
  def t(n): .targets[] | select(.name == n);
  (t("direct").latency) as $d | (t("nginx").latency) as $n | (t("floor").latency) as $f |
  "| target | req/s | errors | p50 | p99 | p99.9 | max | +p50 vs direct | +p99 vs direct | +p50 ÷ floor +p50 | p50 ÷ nginx | p99 ÷ nginx |",
  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  (.targets[] | .latency as $l |
   "| \(.name) | \(.achieved_rate | round) | \(.requests - .ok) | \($l.p50 | f3) | \($l.p99 | f3) | \($l.p999 | f3) | \($l.max | f3) | " +
   (if .name == "direct" then "– | – | – | " else "\($l.p50 - $d.p50 | f3) | \($l.p99 - $d.p99 | f3) | \(($l.p50 - $d.p50) / ($f.p50 - $d.p50) | f2) | " end) +
   "\($l.p50 / $n.p50 | f2) | \($l.p99 / $n.p99 | f2) |"),
  "",
  "Generator schedule lag p99 (ms): " + ([.targets[] | "\(.name) \(.schedule_lag.p99 | f3)"] | join(", ")) +
  ". Connections opened: " + ([.targets[] | "\(.name) \(.connections_opened)"] | join(", ")) + "."
' "$fixed"

cat <<EOF

### SSE: $(jq -r '"\(.rate) streams/s per target (20 chunks, 5 ms apart), \(.duration_s)s in \(.rounds) rounds"' "$sse")

TTFT: scheduled time → first complete \`data:\` event. Gap: time between consecutive events (ms).

EOF
jq -r "$JQ_DEFS"'
  def t(n): .targets[] | select(.name == n);
  (t("direct").ttft) as $d | (t("nginx").ttft) as $n | (t("floor").ttft) as $f |
  "| target | streams | errors | TTFT p50 | TTFT p99 | +TTFT p50 vs direct | +TTFT p99 vs direct | TTFT p99 ÷ floor | TTFT p99 ÷ nginx | gap p50 | gap p99 | gap max | events/frame |",
  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  (.targets[] | .ttft as $x |
   "| \(.name) | \(.requests) | \(.requests - .ok) | \($x.p50 | f3) | \($x.p99 | f3) | " +
   (if .name == "direct" then "– | – | " else "\($x.p50 - $d.p50 | f3) | \($x.p99 - $d.p99 | f3) | " end) +
   "\($x.p99 / $f.p99 | f2) | \($x.p99 / $n.p99 | f2) | \(.chunk_gap.p50 | f3) | \(.chunk_gap.p99 | f3) | \(.chunk_gap.max | f3) | \(.events_per_frame | f2) |")
' "$sse"

# throughput_table TITLE UNIT FILE: a closed-loop run's rates, each also as a
# ratio to the floor's and to nginx's.
throughput_table() {
    local title=$1 unit=$2 file=$3
    printf '\n### %s, closed loop: %s\n\n' "$title" \
        "$(jq -r '"\(.connections) workers per target, \(.duration_s)s in \(.rounds) rounds"' "$file")"
    jq -r --arg unit "$unit" "$JQ_DEFS"'
      def t(n): .targets[] | select(.name == n);
      (t("nginx").achieved_rate) as $n | (t("floor").achieved_rate) as $f |
      "| target | \($unit) | errors | p50 ms | p99 ms | events/frame | ÷ floor | ÷ nginx |",
      "|---|---:|---:|---:|---:|---:|---:|---:|",
      (.targets[] |
       "| \(.name) | \(.achieved_rate | round) | \(.requests - .ok) | \(.latency.p50 | f3) | \(.latency.p99 | f3) | " +
       "\(if .events_per_frame then (.events_per_frame | f2) else "–" end) | \(.achieved_rate / $f | f2) | \(.achieved_rate / $n | f2) |")
    ' "$file"
}
throughput_table "Throughput" "req/s" "$tput"
throughput_table "Streaming throughput (20-chunk streams back to back)" "streams/s" "$sse_tput"

cpu() { jq -r --arg who "$1" "$JQ_DEFS"'.cpu[$who] | fx(1)' "$2"; }
# ratio A B FILE: A's CPU per request over B's.
ratio() { jq -r --arg a "$1" --arg b "$2" "$JQ_DEFS"'.cpu[$a] / .cpu[$b] | f2' "$3"; }
mib() { awk "BEGIN{printf \"%.1f\", $1/1024}"; }
cat <<EOF

### Resources (after the runs)

| process | RSS MiB | peak RSS MiB | CPU µs/request at $RATE req/s | CPU µs/stream, SSE at 200/s | CPU µs/request, throughput run | CPU µs/stream, streaming throughput run |
|---|---:|---:|---:|---:|---:|---:|
| molt data plane | $(mib "$DP_RSS") | $(mib "$DP_HWM") | $(cpu molt "$fixed") | $(cpu molt "$sse") | $(cpu molt "$tput") | $(cpu molt "$sse_tput") |
| Pingora floor | $(mib "$FLOOR_RSS") | $(mib "$FLOOR_HWM") | $(cpu floor "$fixed") | $(cpu floor "$sse") | $(cpu floor "$tput") | $(cpu floor "$sse_tput") |
| nginx (master + workers) | $(mib "$NGINX_RSS") | $(mib "$NGINX_HWM") | $(cpu nginx "$fixed") | $(cpu nginx "$sse") | $(cpu nginx "$tput") | $(cpu nginx "$sse_tput") |
EOF
# agentgateway's rows, when it ran: its own figures and molt's over them.
if [[ -n $AGENTGATEWAY ]]; then
    cat <<EOF
| agentgateway | $(mib "$AGW_RSS") | $(mib "$AGW_HWM") | $(cpu agentgateway "$fixed") | $(cpu agentgateway "$sse") | $(cpu agentgateway "$tput") | $(cpu agentgateway "$sse_tput") |
EOF
fi
cat <<EOF
| molt ÷ floor | $(awk "BEGIN{printf \"%.2f\", $DP_RSS/$FLOOR_RSS}") | | $(ratio molt floor "$fixed") | $(ratio molt floor "$sse") | $(ratio molt floor "$tput") | $(ratio molt floor "$sse_tput") |
| molt ÷ nginx | $(awk "BEGIN{printf \"%.2f\", $DP_RSS/$NGINX_RSS}") | | $(ratio molt nginx "$fixed") | $(ratio molt nginx "$sse") | $(ratio molt nginx "$tput") | $(ratio molt nginx "$sse_tput") |
EOF
if [[ -n $AGENTGATEWAY ]]; then
    cat <<EOF
| molt ÷ agentgateway | $(awk "BEGIN{printf \"%.2f\", $DP_RSS/$AGW_RSS}") | | $(ratio molt agentgateway "$fixed") | $(ratio molt agentgateway "$sse") | $(ratio molt agentgateway "$tput") | $(ratio molt agentgateway "$sse_tput") |
EOF
fi
cat <<EOF

CPU is utime+stime from /proc/PID/stat over each run divided by the requests that process served in it (warm-up included).
EOF

# --- memory per held connection -------------------------------------------------
# scale.sh at a small scale, so this one command also gives memory per SSE
# stream and per idle WebSocket beside nginx; loadtest/scale.sh alone runs
# the 10,000-stream and 50,000-connection versions. MEMORY=0 skips it.
if [[ ${MEMORY:-1} == 1 ]]; then
    log "memory per held connection: scale.sh with ${MEM_STREAMS:-2000} SSE streams, 1,000 and 2,000 idle WebSockets"
    MOLT=$MOLT STREAMS=${MEM_STREAMS:-2000} WS_STEPS=1000 WS_CONNS=2000 "$ROOT/loadtest/scale.sh" all
fi
