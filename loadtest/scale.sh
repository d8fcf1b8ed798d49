#!/usr/bin/env bash
# scale.sh: resident memory per held connection at scale, for the brief's
# "10,000 concurrent SSE streams and 50,000 idle WebSocket connections held,
# with resident memory per connection stated".
#
# What it owns (everything on 127.0.0.1, stopped on exit):
# - `sse`: the mock provider (17201), data plane(s) (17210+i, admin
#   17220+i) and nginx (17230, same key injection as compare.sh) hold
#   STREAMS long SSE streams each in turn (direct, molt, nginx; scenario
#   loadtest/scenarios/scale-sse.toml: 60 chunks 500 ms apart, ~30 s). While
#   all streams are open it reads each proxy's resident memory (VmRSS); then
#   it checks that every stream completed with the same number of events
#   and that molt counted exactly 60 output tokens per stream.
# - `ws`: idle /ws/chat WebSockets to mock bots with loadtest/ws_load.py,
#   through the data plane and then through nginx doing the same job (client
#   key out, bot token in): one proxy process at each of WS_STEPS
#   connections (the slope is the marginal cost of a connection), then
#   WS_CONNS (50,000) across as many processes as the open-file limit needs.
#
# Open files: a proxied connection holds two sockets in the proxy, one in
# the upstream and one in the client. The script raises its soft limit to
# the hard one; where the hard limit is too low for one process (20,000 on
# the development VM, where root lacks CAP_SYS_RESOURCE) the load is split
# over several data planes (and as many nginx workers), and the table says
# so. Raise the hard limit (`ulimit -Hn`, systemd LimitNOFILE) to run one.
#
# Ephemeral ports: one client address to one server port has
# net.ipv4.ip_local_port_range (32768-60999, ~28k) ports. SSE uses one
# port per shard; ws_load.py gives each client process its own 127.0.0.x
# source address (IP_BIND_ADDRESS_NO_PORT) and spreads data planes and
# bots over several ports.
#
# Usage: loadtest/scale.sh [sse|ws|all]      (default all: ~9 minutes)
# Knobs: STREAMS (10000), WS_CONNS (50000), WS_STEPS ("1000 5000 9000"),
# SETTLE (seconds to wait before reading RSS, 3), MOLT (a prebuilt binary,
# skips the build), KEEP=1 (keep the work directory).
set -euo pipefail
# shellcheck source=loadtest/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

WHAT=${1:-all}
STREAMS=${STREAMS:-10000}
WS_CONNS=${WS_CONNS:-50000}
WS_STEPS=${WS_STEPS:-1000 5000 9000}
SETTLE=${SETTLE:-3}
CHUNKS=60 # must match scale-sse.toml
MOCK_PORT=17201
DP_PORT=17210
DP_ADMIN=17220
NGINX_PORT=17230
MASTER_KEY=sk-master-scale

case $WHAT in sse | ws | all) ;; *) die "usage: $0 [sse|ws|all]" ;; esac

# --- tools, limits, build ---------------------------------------------------------
need_tools nginx jq curl ss
HARD=$(ulimit -Hn)
[[ $HARD == unlimited ]] && HARD=1048576
ulimit -n "$HARD"
log "open-file limit $HARD; ephemeral ports $(tr '\t' - </proc/sys/net/ipv4/ip_local_port_range); load $(cut -d' ' -f1-3 /proc/loadavg)"

build_molt

established() { # ports...: established TCP connections whose local port is one of them
    local filter="" p
    for p in "$@"; do filter+="${filter:+ or }sport = :$p"; done
    ss -Htn state established "( $filter )" | wc -l
}

# --- SSE: STREAMS streams held through each target ---------------------------------
sse() {
    # Sockets per data plane: 2 per stream, plus listeners, logs, spool.
    local shards=$(((2 * STREAMS + HARD - 1001) / (HARD - 1000)))
    ((shards >= 1)) || shards=1
    local per=$((STREAMS / shards))
    STREAMS=$((per * shards))
    ((STREAMS + 500 < HARD)) || die "the mock provider alone needs $STREAMS sockets; the hard open-file limit is $HARD"
    log "SSE: $STREAMS streams, $shards shard(s) of $per (data planes, nginx workers, generator processes)"

    start_mock $MOCK_PORT
    new_client_key

    DP_PIDS=()
    local i
    # Thousands of connects at once overflow the mock's accept queue (backlog
    # 1024); SYN retries take 1 s, 3 s, 7 s. This run measures holding
    # streams, not a connect storm, so give connects time (nginx's default is
    # 60 s).
    for ((i = 0; i < shards; i++)); do
        start_dataplane "dataplane-$i" $((DP_PORT + i)) $((DP_ADMIN + i)) $MOCK_PORT $MASTER_KEY \
            'upstream_connect_timeout = "30s"'
        DP_PIDS+=("$DP_PID")
    done

    start_nginx $NGINX_PORT $MOCK_PORT $MASTER_KEY "$shards" $((HARD - 100))
    wait_for "nginx" chat_ok http://127.0.0.1:$NGINX_PORT$CHAT
    for ((i = 0; i < shards; i++)); do
        wait_for "data plane $i route" chat_ok http://127.0.0.1:$((DP_PORT + i))$CHAT
    done
    local nginx_procs
    nginx_procs=$(nginx_pids)

    output_tokens() { # sum of molt_tokens_total{direction="output"} over the data planes
        local total=0 v
        for ((i = 0; i < shards; i++)); do
            v=$(curl -sf http://127.0.0.1:$((DP_ADMIN + i))/metrics |
                awk '/^molt_tokens_total\{/ && /direction="output"/ { s += $NF } END { printf "%d", s }')
            total=$((total + v))
        done
        echo "$total"
    }

    # hold NAME PIDS -- PORTS: STREAMS streams through PORTS (one generator
    # process per port, or per shard on one port), RSS of PIDS while held.
    echo '[]' >"$WORK/sse-rows.json"
    hold() {
        local name=$1
        shift
        local pids=() ports=()
        while [[ $1 != -- ]]; do
            pids+=("$1")
            shift
        done
        shift
        ports=("$@")
        local rss0 tokens0 gens=() s port
        rss0=$(rss_kib VmRSS "${pids[@]}")
        tokens0=$(output_tokens)
        log "SSE via $name: opening $STREAMS streams"
        for ((s = 0; s < shards; s++)); do
            port=${ports[$((s % ${#ports[@]}))]}
            "$MOLT" load --scenario "$SCENARIOS/scale-sse.toml" --connections "$per" \
                --target "$name=http://127.0.0.1:$port$CHAT" \
                --header "authorization: Bearer $CLIENT_KEY" --json >"$WORK/sse-$name-$s.json" 2>"$WORK/sse-$name-$s.log" &
            gens+=($!)
        done
        local open=0 t0=$SECONDS
        while ((SECONDS - t0 < 25)); do
            open=$(established "${ports[@]}")
            ((open >= STREAMS)) && break
            sleep 0.5
        done
        sleep "$SETTLE"
        open=$(established "${ports[@]}")
        local rss1 hwm up_rss
        rss1=$(rss_kib VmRSS "${pids[@]}")
        hwm=$(rss_kib VmHWM "${pids[@]}")
        up_rss=$(rss_kib VmRSS "$MOCK_PID")
        log "SSE via $name: $open streams open after $((SECONDS - t0)) s; RSS $rss0 -> $rss1 KiB; waiting for them to end"
        local failed=0
        for s in "${gens[@]}"; do wait "$s" || failed=1; done
        ((failed == 0)) || log "SSE via $name: a generator failed; see $WORK/sse-$name-*.log"
        local tokens1
        tokens1=$(output_tokens)
        jq -s --arg name "$name" --argjson rss0 "$rss0" --argjson rss1 "$rss1" --argjson hwm "$hwm" \
            --argjson open "$open" --argjson up "$up_rss" --argjson tokens $((tokens1 - tokens0)) \
            --argjson procs "${#pids[@]}" '
            { name: $name, procs: $procs, open_at_snapshot: $open, rss0_kib: $rss0, rss1_kib: $rss1,
              hwm_kib: $hwm, mock_rss_kib: $up,
              streams: (map(.targets[0].requests) | add), ok: (map(.targets[0].ok) | add),
              errors: (map(.targets[0].errors | to_entries) | add | group_by(.key)
                       | map({key: .[0].key, value: (map(.value) | add)}) | from_entries),
              events_min: (map(.targets[0].events_per_stream[0] // 0) | min),
              events_max: (map(.targets[0].events_per_stream[1] // 0) | max),
              ttft_p50_ms: (map(.targets[0].ttft.p50) | max),
              molt_output_tokens: $tokens }' "$WORK"/sse-"$name"-*.json >"$WORK/sse-$name.row.json"
        jq --slurpfile r "$WORK/sse-$name.row.json" '. + $r' "$WORK/sse-rows.json" >"$WORK/sse-rows.tmp"
        mv "$WORK/sse-rows.tmp" "$WORK/sse-rows.json"
    }

    local dp_ports=()
    for ((i = 0; i < shards; i++)); do dp_ports+=($((DP_PORT + i))); done
    # shellcheck disable=SC2086 # nginx_procs is a list
    {
        hold direct "$MOCK_PID" -- $MOCK_PORT
        hold molt "${DP_PIDS[@]}" -- "${dp_ports[@]}"
        hold nginx $nginx_procs -- $NGINX_PORT
    }

    cat <<EOF

## $STREAMS concurrent SSE streams ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))

$CHUNKS chunks 500 ms apart per stream, all open together; RSS read $SETTLE s after the last stream opened.
molt: $shards data plane(s) of 1 thread; nginx: $shards worker(s); each holds $per streams (open-file limit $HARD).

EOF
    jq -r --argjson n "$STREAMS" --argjson chunks "$CHUNKS" '
        def f1: (. * 10 | round) / 10 | tostring;
        def per: (.rss1_kib - .rss0_kib) / $n;
        (map(select(.name == "nginx") | per) | first) as $ng
        | "| target | streams ok / sent | errors | events per stream (min-max) | molt output tokens (expected) | proxy RSS before → held MiB | proxy KiB per stream | per stream ÷ nginx | mock RSS held MiB |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
        (.[] | "| \(.name) | \(.ok) / \(.streams) | \(if (.errors | length) == 0 then "none" else (.errors | tostring) end) | \(.events_min)-\(.events_max) | " +
          (if .name == "molt" then "\(.molt_output_tokens) (\($n * $chunks))" else "–" end) + " | " +
          (if .name == "direct" then "– (no proxy) | – | – | " else "\(.rss0_kib / 1024 | f1) → \(.rss1_kib / 1024 | f1) | \(per | f1) | \(if $ng > 0 then (per / $ng * 100 | round) / 100 | tostring else "–" end) | " end) +
          "\(.mock_rss_kib / 1024 | f1) |")
    ' "$WORK/sse-rows.json"
    jq -e --argjson n "$STREAMS" --argjson chunks "$CHUNKS" '
        (map(select(.ok != $n)) | length == 0)
        and (map(.events_min) + map(.events_max) | unique | length == 1)
        and (.[] | select(.name == "molt") | .molt_output_tokens == $n * $chunks)' "$WORK/sse-rows.json" >/dev/null ||
        { log "SSE check FAILED: not every stream completed alike, or molt's token count is off"; SSE_FAILED=1; }
    stop_all
}

# --- WebSockets: idle connections through the data plane, and through nginx ------------
ws() {
    e2e_venv
    local via n rows=()
    for via in molt nginx; do
        for n in $WS_STEPS; do
            log "WebSocket: $n idle connections through one $via process"
            "$VENV/bin/python" "$ROOT/loadtest/ws_load.py" --via $via --molt "$MOLT" --nginx "$NGINX" \
                --conns "$n" --dataplanes 1 --messages 1000 --settle "$SETTLE" --json >"$WORK/ws-$via-$n.json"
            rows+=("$WORK/ws-$via-$n.json")
        done
        log "WebSocket: $WS_CONNS idle connections through $via"
        "$VENV/bin/python" "$ROOT/loadtest/ws_load.py" --via $via --molt "$MOLT" --nginx "$NGINX" \
            --conns "$WS_CONNS" --messages 2000 --settle "$SETTLE" --json >"$WORK/ws-$via-$WS_CONNS.json"
        rows+=("$WORK/ws-$via-$WS_CONNS.json")
    done
    cat <<EOF

## Idle WebSocket connections through the data plane and through nginx ($(date -u +%Y-%m-%dT%H:%MZ), load $(cut -d' ' -f1-3 /proc/loadavg))

Proxy processes: molt data planes (2 threads each), or nginx worker processes (same key-for-token swap).
RSS is summed over them (nginx: master included), read $SETTLE s after the last connection opened.

EOF
    jq -r -s '
        def f1: (. * 10 | round) / 10 | tostring;
        def ms: (. / 10 | round) / 100 | tostring;
        "| via | connections | proxy processes | opened (errors) | RSS before → held MiB | KiB per connection | echo RTT p50 / p99 via proxy ms | direct ms | added p50 / p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        (.[] | "| \(.via) | \(.connections_requested) | \(.dataplanes) | \(.connections_opened) (\(.errors | length)) | \(.rss_kib_before | add / 1024 | f1) → \(.rss_kib_after | add / 1024 | f1) | \(.rss_bytes_per_connection / 1024 | f1) | \(.rtt_us.proxied.p50 | ms) / \(.rtt_us.proxied.p99 | ms) | \(.rtt_us.direct.p50 | ms) / \(.rtt_us.direct.p99 | ms) | \(.added_us.p50_of_difference | ms) / \(.added_us.p99_of_difference | ms) |")
    ' "${rows[@]}"
    # The marginal cost: slope of RSS over the single-process steps, per proxy.
    jq -r -s '
        def slope: length as $n | (map(.x) | add / $n) as $mx | (map(.y) | add / $n) as $my
          | (map((.x - $mx) * (.y - $my)) | add) / (map((.x - $mx) * (.x - $mx)) | add);
        (group_by(.via) | map({via: .[0].via,
            p: [.[] | select(.dataplanes == 1) | {x: .connections_opened, y: (.rss_kib_after | add)}]})
         | map(select(.p | length >= 2) | {via, kib: (.p | slope)})) as $s
        | if ($s | length) == 0 then empty else
          "\nMarginal resident memory per idle connection (least-squares slope of RSS over the one-process steps): " +
          ($s | map("\(.via) \((.kib * 10 | round) / 10) KiB") | join(", ")) +
          (if ($s | length) == 2 then "; molt ÷ nginx \(((($s[0].kib / $s[1].kib) * 100) | round) / 100)." else "." end)
          end' "${rows[@]}"
}

SSE_FAILED=0
[[ $WHAT == sse || $WHAT == all ]] && sse
[[ $WHAT == ws || $WHAT == all ]] && ws
((SSE_FAILED == 0)) || exit 1
