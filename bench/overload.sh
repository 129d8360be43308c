#!/usr/bin/env bash
# Overload: a provider slowed to LATENCY (default 250ms) while an open-loop client keeps sending RATE requests/s
# (default 8,000) for 4 s to a single-worker sidecar on CPU 0 (client and fake provider on CPU 1).
# The client opens a connection for every request it cannot send on an idle one, as an
# unbounded pool would. Prints what was answered, what was refused and why, and the sidecar's
# memory at the end of the burst and 12 s later (past one check of its memory trim).
#
#   bench/overload.sh                         # with the default --max-in-flight (1,024)
#   bench/overload.sh --max-in-flight 0       # with no limit, to compare
#
# Extra arguments go to llmesh-sidecar.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --locked -p llmesh-sidecar -p llmesh-fakes -p llmesh-bench
bin=$PWD/target/release
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
# taskset when there is one; `exec` keeps $! the process itself.
pin() { if command -v taskset >/dev/null; then exec taskset -c "$@"; else shift; exec "$@"; fi; }

(pin 1 "$bin/llmesh-fake-provider" --listen 127.0.0.1:0 > "$work/fake.out") &
for _ in $(seq 50); do [ -s "$work/fake.out" ] && break; sleep 0.1; done
fake=$(head -1 "$work/fake.out" | sed 's/.*://')
cat > "$work/routes.yaml" <<YAML
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata: {name: bench-slow}
spec:
  backends:
    - {name: slow, provider: openaiCompatible, model: gpt-4o-mini-2024-07-18, baseUrl: "http://127.0.0.1:$fake/s/fast,latency=${LATENCY:-250ms}/v1"}
YAML
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
(LLMESH_WORKER_THREADS=1 pin 0 "$bin/llmesh-sidecar" --config "$work/routes.yaml" --listen "127.0.0.1:$port" "$@" \
  > "$work/access.log" 2> "$work/sidecar.err") &
sidecar=$!
for _ in $(seq 100); do curl -sf "127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
rss() { awk "/^$1:/{printf \"%.1f\", \$2 / 1024}" "/proc/$sidecar/status"; }
before=$(rss VmRSS)
(pin 1 "$bin/llmesh-bench" open --rate "${RATE:-8000}" --duration 4 --warmup 0 \
  --url "http://127.0.0.1:$port/v1/chat/completions" \
  --body '{"model":"bench-slow","messages":[{"role":"user","content":"hi"}]}' > "$work/out.json")
end=$(rss VmRSS); peak=$(rss VmHWM)
sleep 12
python3 - "$work/out.json" "$before" "$peak" "$end" "$(rss VmRSS)" "$(grep -c 'Too many open files' "$work/sidecar.err" || true)" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
lat = r["latency_us"] or {}
why = ", ".join(f"{v:,} {k}" for k, v in r["failures"].items()) or "none"
print(f"answered 200: {r['rps']:,} requests/s (p50 {lat.get('p50')} us, p99 {lat.get('p99')} us); "
      f"not: {r['errors']:,} ({why}); client schedule lag p99 {r['lag_us']['p99']} us")
print(f"sidecar RSS MiB: {sys.argv[2]} before, peak {sys.argv[3]}, {sys.argv[4]} at the end, {sys.argv[5]} 12 s later; "
      f"'too many open files': {sys.argv[6]}")
PY
