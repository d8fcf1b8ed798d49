#!/usr/bin/env bash
# aiperf.sh: a second opinion on the SSE figures from NVIDIA's aiperf, an
# LLM benchmarking client independent of `molt load`: time to first token
# (TTFT) and inter-token latency (ITL) of streaming chat completions from
# the mock provider reached directly and through the data plane.
#
# What it owns (all on 127.0.0.1, stopped on exit): a pinned aiperf venv in
# ~/.cache/molt/aiperf-$AIPERF_VERSION, the offline tokenizer workaround
# (aiperf's `builtin` tokenizer is tiktoken's o200k_base, which tiktoken
# downloads on first use; the same file ships in the tiktoken-rs crate this
# workspace already depends on, so it is copied into a TIKTOKEN_CACHE_DIR
# under the name tiktoken looks for: the SHA-1 of its download URL), the
# mock provider (17301) and one data plane (17310, admin 17320) configured
# as in compare.sh. aiperf runs ROUNDS times against each target, the
# targets taking turns (direct, molt, direct, molt, ...).
#
# The mock is started with CHUNKS chunks DELAY_MS apart as its defaults
# (aiperf 0.13.0 parses `--header` values as JSON, so a numeric x-mock-*
# header fails its validation), so ITL should read DELAY_MS;
# `--use-server-token-count` makes aiperf take
# token counts from the usage the stream reports, so through the data plane
# it also checks the usage chunk reaches the client when asked for.
#
# Usage: loadtest/aiperf.sh    (about 2 minutes after the build and the
# one-time venv install of ~1.2 GB)
# Knobs: CONCURRENCY (8), REQUESTS (400 per run), CHUNKS (20), DELAY_MS (5),
# ROUNDS (2), MOLT (a prebuilt binary), KEEP=1.
set -euo pipefail
# shellcheck source=loadtest/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

AIPERF_VERSION=0.13.0
CONCURRENCY=${CONCURRENCY:-8}
REQUESTS=${REQUESTS:-400}
CHUNKS=${CHUNKS:-20}
DELAY_MS=${DELAY_MS:-5}
ROUNDS=${ROUNDS:-2}
MOCK_PORT=17301
DP_PORT=17310
DP_ADMIN=17320
MASTER_KEY=sk-master-aiperf
O200K_URL=https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken

need_tools jq curl python3
ports_free $MOCK_PORT $DP_PORT $DP_ADMIN

# --- aiperf, pinned, in its own venv -----------------------------------------------
AIPERF_VENV=$HOME/.cache/molt/aiperf-$AIPERF_VERSION
if ! "$AIPERF_VENV/bin/aiperf" --version 2>/dev/null | grep -qx "$AIPERF_VERSION"; then
    log "installing aiperf==$AIPERF_VERSION into $AIPERF_VENV (one time, ~1.2 GB)"
    rm -rf "$AIPERF_VENV"
    python3 -m venv "$AIPERF_VENV"
    "$AIPERF_VENV/bin/pip" install --quiet --disable-pip-version-check "aiperf==$AIPERF_VERSION"
fi

# --- the o200k_base tokenizer file, offline ----------------------------------------
export TIKTOKEN_CACHE_DIR=$HOME/.cache/molt/tiktoken
mkdir -p "$TIKTOKEN_CACHE_DIR"
cached=$TIKTOKEN_CACHE_DIR/$(printf '%s' "$O200K_URL" | sha1sum | cut -c1-40)
if [[ ! -s $cached ]]; then
    (cd "$ROOT" && cargo fetch --quiet)
    src=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -path '*/tiktoken-rs-*/assets/o200k_base.tiktoken' | sort -V | tail -1)
    [[ -n $src ]] || die "o200k_base.tiktoken not found in the cargo registry (tiktoken-rs)"
    cp "$src" "$cached"
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1

# --- molt, the mock and a data plane -------------------------------------------------
build_molt
start_mock $MOCK_PORT --chunks "$CHUNKS" --chunk-delay-ms "$DELAY_MS"
new_client_key
start_dataplane dataplane $DP_PORT $DP_ADMIN $MOCK_PORT $MASTER_KEY

# --- runs -----------------------------------------------------------------------------
profile() { # name url round
    local name=$1 url=$2 round=$3 out=$WORK/$1-$3
    log "round $round: $name ($REQUESTS streams, concurrency $CONCURRENCY)"
    "$AIPERF_VENV/bin/aiperf" profile --model gpt-4o-mini --url "$url" --endpoint-type chat --streaming \
        --api-key "$CLIENT_KEY" --tokenizer builtin --use-server-token-count \
        --concurrency "$CONCURRENCY" --request-count "$REQUESTS" --warmup-request-count 20 \
        --prompt-input-tokens-mean 64 --prompt-output-tokens-mean "$CHUNKS" \
        --ui-type none --output-artifact-dir "$out" >"$out.log" 2>&1 ||
        die "aiperf failed against $name; see $out.log"
    [[ -s $out/profile_export_aiperf.json ]] || die "no profile_export_aiperf.json from the $name run; see $out.log"
    echo "$out/profile_export_aiperf.json"
}
REPORTS=()
for ((r = 1; r <= ROUNDS; r++)); do
    REPORTS+=("direct=$(profile direct http://127.0.0.1:$MOCK_PORT "$r")")
    REPORTS+=("molt=$(profile molt http://127.0.0.1:$DP_PORT "$r")")
done

# --- table ----------------------------------------------------------------------------
for entry in "${REPORTS[@]}"; do
    jq -c --arg name "${entry%%=*}" '{name: $name,
        ttft: .time_to_first_token, itl: .inter_token_latency,
        count: .request_count.avg, errors: (.error_request_count.avg // 0),
        osl: .output_sequence_length}' "${entry#*=}"
done >"$WORK/rows.jsonl"
cat <<EOF

## aiperf $AIPERF_VERSION: mock provider direct vs through molt ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))

$REQUESTS streaming chat completions per run at concurrency $CONCURRENCY, $CHUNKS chunks $DELAY_MS ms apart, $ROUNDS interleaved round(s) per target; ms.

EOF
jq -r -s '
    def f3: (. * 1000 | round) / 1000 | tostring;
    "| target (round) | requests | errors | output tokens avg | TTFT avg | TTFT p50 | TTFT p99 | ITL avg | ITL p50 | ITL p99 |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    (to_entries[] | .value as $v |
     "| \($v.name) (\(.key / 2 | floor + 1)) | \($v.count) | \($v.errors) | \($v.osl.avg | f3) | \($v.ttft.avg | f3) | \($v.ttft.p50 | f3) | \($v.ttft.p99 | f3) | \($v.itl.avg | f3) | \($v.itl.p50 | f3) | \($v.itl.p99 | f3) |")
' "$WORK/rows.jsonl"
