#!/usr/bin/env bash
# The README's Kubernetes demo, run as written: it fails if any step of the flow breaks
# (CRDs, RBAC, operator, webhook injection, Ready condition, push to a sidecar, live edit).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=$(mktemp)
trap 'rm -f "$out"' EXIT
if ! scripts/demo-k8s.sh >"$out" 2>&1; then
  cat "$out"
  echo "scripts/demo-k8s.sh failed" >&2
  exit 1
fi
# What a newcomer is told to look for must be there.
for want in 'restartPolicy=Always' 'OPENAI_BASE_URL=http://127.0.0.1:4000/v1' \
  'condition met' 'x-llmesh-route: chat' 'is answered by challenger'; do
  if ! grep -qF -- "$want" "$out"; then
    cat "$out"
    echo "demo output lacks: $want" >&2
    exit 1
  fi
done
echo "demo-k8s: $(grep -F 'is answered by challenger' "$out")"
