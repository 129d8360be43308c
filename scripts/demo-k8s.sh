#!/usr/bin/env bash
# The whole llmesh Kubernetes flow on one machine, no cluster needed:
#
#   real kube-apiserver + etcd (the e2e tests' control plane)
#   -> `helm install` of charts/llmesh (CRDs, RBAC, webhook; no kubelet runs its Deployment)
#   -> llmesh-operator run here with the chart's ServiceAccount token (exactly its RBAC)
#   -> the chart's webhook pointed at this machine -> an opted-in Pod comes back with the sidecar
#   -> examples/k8s/*.yaml applied -> the route reports Ready
#   -> a real llmesh-sidecar holding that Pod's bound token -> a request goes through
#   -> kubectl edits the route -> the sidecar follows within a second
#
# Usage: scripts/demo-k8s.sh [--keep]   (--keep: leave everything running until Enter)
# Needs what tests/controlplane/install.sh needs (Go, Python with pip) the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
KEEP=${1:-}
export LLMESH_CACHE=${LLMESH_CACHE:-$REPO/.cache}
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
OP_PORT=${LLMESH_DEMO_OPERATOR_PORT:-18443}
ADMIN_PORT=${LLMESH_DEMO_ADMIN_PORT:-18080}
SIDECAR_PORT=${LLMESH_DEMO_SIDECAR_PORT:-14000}

bold="" plain=""
if [ -t 1 ]; then bold=$(tput bold 2>/dev/null || true) plain=$(tput sgr0 2>/dev/null || true); fi
step() { printf '\n%s==> %s%s\n' "$bold" "$*" "$plain"; }
run() { printf '$ %s\n' "$*"; "$@"; }

WORK=$(mktemp -d -t llmesh-demo-XXXXXX)
pids=()
cleanup() {
  local code=$?
  step "tearing down"
  # Newest first: sidecar, operator, then the control plane (which stops apiserver, then etcd).
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
  done
  rm -rf "$WORK"
  exit "$code"
}
trap cleanup EXIT INT TERM

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then
      echo "timed out waiting for $what" >&2
      return 1
    fi
    sleep 0.2
  done
}

step "installing the test control plane's binaries (cached after the first run)"
tests/controlplane/install.sh >"$WORK/install.log" 2>&1 || {
  cat "$WORK/install.log"
  exit 1
}
tail -n 4 "$WORK/install.log"
K="$LLMESH_CACHE/bin/kubectl"
HELM="$LLMESH_CACHE/bin/helm"

step "building llmesh-testenv, llmesh-operator and llmesh-sidecar"
run cargo build -q -p llmesh-testenv -p llmesh-operator -p llmesh-sidecar --bins

step "starting a real kube-apiserver and etcd on loopback"
"$TARGET/debug/llmesh-testenv" up >"$WORK/controlplane.log" 2>&1 &
pids+=($!)
wait_for 120 "the control plane" grep -q '^export KUBECONFIG=' "$WORK/controlplane.log"
export KUBECONFIG
KUBECONFIG=$(sed -n 's/^export KUBECONFIG=//p' "$WORK/controlplane.log")
grep -E '^(kube-apiserver|started in):' "$WORK/controlplane.log"

step "the Helm chart: CRDs, the operator's least-privilege RBAC, the injection webhook"
run "$HELM" install llmesh charts/llmesh -n llmesh-system --create-namespace | sed -n '1,/^NOTES:/p'
run "$K" wait --for=condition=Established crd/llmroutes.llmesh.io crd/llmbudgets.llmesh.io
run "$K" get serviceaccount/llmesh-operator role/llmesh-operator clusterrole/llmesh-operator \
  mutatingwebhookconfiguration/llmesh-sidecar-injector -n llmesh-system

step "the chart's webhook pointed at this machine (here no kubelet runs the operator's pods)"
for i in 0 1; do
  printf '{"op":"remove","path":"/webhooks/%s/clientConfig/service"},{"op":"add","path":"/webhooks/%s/clientConfig/url","value":"https://127.0.0.1:%s/mutate-pods"},' "$i" "$i" "$OP_PORT"
done | sed 's/^/[/; s/,$/]/' >"$WORK/webhook-patch.json"
run "$K" patch mutatingwebhookconfiguration llmesh-sidecar-injector --type json --patch-file "$WORK/webhook-patch.json"

step "starting llmesh-operator with the chart's ServiceAccount token (exactly its RBAC)"
SERVER=$("$K" config view --raw -o jsonpath='{.clusters[0].cluster.server}')
CA_FILE=$("$K" config view --raw -o jsonpath='{.clusters[0].cluster.certificate-authority}')
OP_TOKEN=$("$K" create token llmesh-operator -n llmesh-system --duration 1h)
cat >"$WORK/operator.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: demo, cluster: {server: "$SERVER", certificate-authority: "$CA_FILE"}}]
users: [{name: llmesh-operator, user: {token: "$OP_TOKEN"}}]
contexts: [{name: demo, context: {cluster: demo, user: llmesh-operator, namespace: llmesh-system}}]
current-context: demo
EOF
chmod 600 "$WORK/operator.kubeconfig"
KUBECONFIG="$WORK/operator.kubeconfig" "$TARGET/debug/llmesh-operator" \
  --namespace llmesh-system \
  --listen "127.0.0.1:$OP_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
  --tls-san 127.0.0.1 --operator-url "https://127.0.0.1:$OP_PORT" \
  >"$WORK/operator.log" 2>&1 &
pids+=($!)
t0=$(date +%s%N)
wait_for 30 "the operator's /readyz" curl -sf "http://127.0.0.1:$ADMIN_PORT/readyz"
echo "operator ready in $((($(date +%s%N) - t0) / 1000000)) ms (log: $WORK/operator.log)"

has_ca_bundle() { [ -n "$("$K" get mutatingwebhookconfiguration llmesh-sidecar-injector -o jsonpath='{.webhooks[0].clientConfig.caBundle}')" ]; }
wait_for 30 "the operator to set the webhook's caBundle" has_ca_bundle
echo "caBundle set by the operator"

step "an app namespace that opts in, and the example route and budget"
run "$K" create namespace demo
run "$K" label namespace demo llmesh.io/inject=enabled
run "$K" apply -n demo -f examples/k8s/
run "$K" create serviceaccount app -n demo

step "a plain Pod; the API server calls the webhook, which injects the sidecar"
cat <<'EOF' | run "$K" apply -n demo -f -
apiVersion: v1
kind: Pod
metadata: {name: app, labels: {app: demo}}
spec:
  serviceAccountName: app
  containers: [{name: app, image: registry.example/app:1}]
EOF
echo "init containers (native sidecars): $("$K" get pod app -n demo -o jsonpath='{range .spec.initContainers[*]}{.name} restartPolicy={.restartPolicy}{end}')"
echo "app env: $("$K" get pod app -n demo -o jsonpath='{range .spec.containers[0].env[*]}{.name}={.value} {end}')"

step "the route's status"
run "$K" wait -n demo --for=condition=Ready llmroute/chat --timeout=30s
run "$K" get llmroutes,llmbudgets -n demo

step "starting llmesh-sidecar with a token bound to that Pod (what the kubelet projects)"
"$K" create token app -n demo --audience llmesh --bound-object-kind Pod --bound-object-name app >"$WORK/token"
"$K" get secret llmesh-operator-tls -n llmesh-system -o jsonpath='{.data.ca\.crt}' | base64 -d >"$WORK/ca.crt"
"$TARGET/debug/llmesh-sidecar" --operator "https://127.0.0.1:$OP_PORT" --operator-ca "$WORK/ca.crt" \
  --token-file "$WORK/token" --snapshot-cache "$WORK/snapshot.json" \
  --listen "127.0.0.1:$SIDECAR_PORT" --access-log off >"$WORK/sidecar.log" 2>&1 &
pids+=($!)
wait_for 30 "the sidecar's /readyz" curl -sf "http://127.0.0.1:$SIDECAR_PORT/readyz"
echo "sidecar ready (log: $WORK/sidecar.log)"

# ask USER: one chat completion as USER; prints the routing headers and the start of the reply.
ask() {
  curl -s -D "$WORK/headers" "http://127.0.0.1:$SIDECAR_PORT/v1/chat/completions" \
    -H 'content-type: application/json' -H "x-llmesh-user: $1" \
    -d '{"model": "chat", "messages": [{"role": "user", "content": "Say hello"}]}' >"$WORK/body"
  grep -i '^x-llmesh-\(route\|backend\|variant\|cost-usd\)' "$WORK/headers" | tr -d '\r'
  python3 -c 'import json,sys; print("reply:", json.load(open(sys.argv[1]))["choices"][0]["message"]["content"][:80])' "$WORK/body"
}
# backend_of USER: the backend that answers USER.
backend_of() {
  curl -s -D - -o /dev/null "http://127.0.0.1:$SIDECAR_PORT/v1/chat/completions" \
    -H 'content-type: application/json' -H "x-llmesh-user: $1" \
    -d '{"model": "chat", "messages": [{"role": "user", "content": "Say hello"}]}' |
    tr -d '\r' | sed -n 's/^x-llmesh-backend: //Ip'
}
# split: which backend answers each of 20 users (the split is sticky per user).
split() {
  local counts
  counts=$(for u in $(seq 1 20); do backend_of "user-$u"; done | sort | uniq -c | awk '{printf "%s=%s ", $2, $1}')
  echo "20 users: $counts"
}

step "a request through the sidecar (what any OpenAI SDK at OPENAI_BASE_URL would send)"
ask user-1
split

step "kubectl edits the route: every user to the challenger"
user=""
for u in $(seq 1 50); do
  if [[ "$(backend_of "user-$u")" == primary ]]; then user="user-$u" && break; fi
done
if [[ -z "$user" ]]; then
  echo "none of 50 users is answered by primary: the split is broken" >&2
  exit 1
fi
echo "$user is answered by primary before the edit"
run "$K" patch llmroute chat -n demo --type json \
  -p '[{"op":"replace","path":"/spec/backends/0/weight","value":0},{"op":"replace","path":"/spec/backends/1/weight","value":100}]'
t0=$(date +%s%N)
until [[ "$(backend_of "$user")" == challenger ]]; do
  if (($(date +%s%N) - t0 > 10000000000)); then
    echo "the sidecar did not follow the edit within 10 s" >&2
    exit 1
  fi
  sleep 0.01
done
echo "$user is answered by challenger $((($(date +%s%N) - t0) / 1000000)) ms after kubectl returned"
split
run "$K" get llmroutes -n demo

if [[ "$KEEP" == "--keep" ]]; then
  step "still running: KUBECONFIG=$KUBECONFIG; sidecar at http://127.0.0.1:$SIDECAR_PORT/v1"
  read -r -p "Press Enter to tear down. "
fi
