#!/usr/bin/env bash
# Instructions per request in the sidecar, counted by valgrind's callgrind: repeatable to a few
# parts per thousand whatever else the machine is doing, so it is what hot-path changes are
# judged by (bench/run.py measures time, which a shared 2-core machine makes noisy).
#
#   bench/callgrind.sh [plain|stream] [seconds]      # prints instructions per request
#   TARGET=hop bench/callgrind.sh [plain|stream]     # the same for llmesh-hop, the bare stack
#   BODY="$(cat prompt.json)" bench/callgrind.sh     # another request body (a real prompt's size)
#   ENDPOINT=/v1/messages BODY=... bench/callgrind.sh # another endpoint of the sidecar
#
# Leaves the profile in $CARGO_TARGET_DIR (default target)/callgrind.<mode>.out (…<mode>.hop.out)
# for `callgrind_annotate`.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-plain}
secs=${2:-10}
cargo build --release --quiet -p llmesh-sidecar -p llmesh-fakes -p llmesh-bench
target_dir=${CARGO_TARGET_DIR:-target}
bin=$target_dir/release
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT

"$bin/llmesh-fake-provider" --listen 127.0.0.1:0 > "$work/fake.out" &
for _ in $(seq 50); do [ -s "$work/fake.out" ] && break; sleep 0.1; done
fake=$(head -1 "$work/fake.out" | sed 's/.*://')
cat > "$work/routes.yaml" <<YAML
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata: {name: bench}
spec:
  backends:
    - {name: fake, provider: openaiCompatible, model: gpt-4o-mini-2024-07-18, baseUrl: "http://127.0.0.1:$fake/s/fast/v1"}
YAML
port=$((20000 + RANDOM % 20000))
target=${TARGET:-llmesh}
if [ "$target" = hop ]; then
  cmd=("$bin/llmesh-hop" --upstream "127.0.0.1:$fake" --listen "127.0.0.1:$port")
  path=/s/fast/v1/chat/completions
  out="$target_dir/callgrind.$mode.hop.out"
else
  cmd=("$bin/llmesh-sidecar" --config "$work/routes.yaml" --listen "127.0.0.1:$port")
  path=${ENDPOINT:-/v1/chat/completions}
  out="$target_dir/callgrind.$mode.out"
fi
LLMESH_WORKER_THREADS=1 valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
  "${cmd[@]}" >/dev/null 2>"$work/vg.err" &
vg=$!
for _ in $(seq 100); do curl -s "127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.2; done
if [ "$mode" = stream ]; then
  body='{"model":"bench","stream":true,"messages":[{"role":"user","content":"Say hello"}]}'
  extra=--stream
else
  body='{"model":"bench","messages":[{"role":"user","content":"Say hello"}]}'
  extra=
fi
body=${BODY:-$body}
# Warm up (connection pools, lazily resolved metric handles), then count.
"$bin/llmesh-bench" closed --url "http://127.0.0.1:$port$path" --body "$body" --duration 2 --warmup 0 $extra >/dev/null
callgrind_control -i on "$vg" >/dev/null; sleep 1
n=$("$bin/llmesh-bench" closed --url "http://127.0.0.1:$port$path" --body "$body" --duration "$secs" --warmup 0 $extra \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"])')
callgrind_control -i off "$vg" >/dev/null
kill -TERM "$vg"; wait "$vg" 2>/dev/null || true
total=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}')
echo "target=$target mode=$mode requests=$n instructions=$total per_request=$((total / n))"
