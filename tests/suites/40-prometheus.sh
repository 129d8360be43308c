#!/usr/bin/env bash
# The chart's dashboards and rules against a real Prometheus:
#   - `promtool check rules` on charts/llmesh/rules/*.yaml, and on every dashboard query (each
#     wrapped in a recording rule, so a query that does not parse fails here by panel);
#   - two sidecars (tests/prometheus/routes.yaml: the built-in mock provider for failure
#     patterns, and the fake OpenAI, Anthropic and Gemini APIs of tests/fakes for real answers and
#     streams) on loopback, with --admin-listen; and, as scripts/demo-k8s.sh does it, a real kube-apiserver and etcd
#     (llmesh-testenv), the chart installed, llmesh-operator with its admin port, a Pod admitted
#     through its webhook, and a third sidecar fed by the operator;
#   - Prometheus scrapes the three sidecars' and the operator's admin ports every second (target
#     labels namespace and pod, as the chart's PodMonitor adds) and evaluates the rule group
#     every second;
#   - tests/prometheus/check.py drives traffic (A/B split, fallbacks, retries, cache hits, cut
#     streams, an open circuit, a spent budget) while routes are edited (snapshot fan-out), and
#     evaluates every panel query and every rule expression through /api/v1/query: each must
#     return data with the labels it groups by. Alert conditions are evaluated operand by operand
#     (without their comparison).
# Installs Prometheus (Debian package `prometheus`) when missing; starts no system service.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
T=$REPO/tests/prometheus
CHART=$REPO/charts/llmesh
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
ok() { printf '  ok   %s\n' "$*"; }
fail() { printf '  FAIL %s\n' "$*" >&2; exit 1; }

if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  echo "installing prometheus (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  # policy-rc.d: the package must not start (or leave running) a system Prometheus.
  own_policy=false
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && own_policy=true
  fi
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  $own_policy && rm -f /usr/sbin/policy-rc.d
fi
if [[ ! -x "$TARGET/debug/llmesh-sidecar" || ! -x "$TARGET/debug/llmesh-testenv" || ! -x "$TARGET/debug/llmesh-operator" || ! -x "$TARGET/debug/llmesh-fake-provider" ]]; then
  (cd "$REPO" && cargo build -q -p llmesh-sidecar -p llmesh-testenv -p llmesh-operator -p llmesh-fakes --bins)
fi

WORK=$(mktemp -d -t llmesh-prom-XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- promtool --------------------------------------------------------------------------------
# Each rules/*.yaml is one group (what the chart's PrometheusRule template takes); promtool and
# Prometheus read a `groups:` list.
python3 - "$CHART/rules" "$WORK/rules.yaml" <<'PY'
import glob, sys, yaml
groups = [yaml.safe_load(open(p)) for p in sorted(glob.glob(sys.argv[1] + "/*.yaml"))]
assert groups, "no rules/*.yaml"
yaml.safe_dump({"groups": groups}, open(sys.argv[2], "w"), sort_keys=False)
PY
promtool check rules "$WORK/rules.yaml" >"$WORK/promtool.out" 2>&1 || fail "promtool check rules: $(cat "$WORK/promtool.out")"
ok "promtool check rules: $(grep -o 'SUCCESS.*' "$WORK/promtool.out")"
python3 - "$CHART/dashboards" "$WORK/panels.yaml" <<'PY'
import glob, json, re, sys, yaml
rules = []
for path in sorted(glob.glob(sys.argv[1] + "/*.json")):
    for p in json.load(open(path))["panels"]:
        for t in p.get("targets", []):
            e = t["expr"]
            for k, v in {"$__rate_interval": "30s", "$__interval": "5s", "$__range": "5m", "$namespace": ".*", "$route": ".*"}.items():
                e = e.replace(k, v)
            name = re.sub(r"\W+", "_", f"{path.rsplit('/', 1)[1]} {p['title']} {t['refId']}").strip("_")
            rules.append({"record": "panel:" + name, "expr": e})
yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}, open(sys.argv[2], "w"))
PY
promtool check rules "$WORK/panels.yaml" >"$WORK/promtool-panels.out" 2>&1 || fail "a dashboard query does not parse: $(cat "$WORK/promtool-panels.out")"
ok "every dashboard query parses ($(grep -o 'SUCCESS.*' "$WORK/promtool-panels.out"))"

# --- the fake providers (OpenAI, Anthropic and Gemini wire formats) -------------------------
"$TARGET/debug/llmesh-fake-provider" --listen 127.0.0.1:0 >"$WORK/fake.out" 2>"$WORK/fake.log" &
pids+=($!)
for _ in $(seq 100); do grep -q '^listening on ' "$WORK/fake.out" 2>/dev/null && break; sleep 0.1; done
fake_addr=$(sed -n 's/^listening on //p' "$WORK/fake.out")
[[ -n "$fake_addr" ]] || fail "the fake provider did not start: $(cat "$WORK/fake.log")"
ok "fake providers on $fake_addr"

# --- two sidecars ----------------------------------------------------------------------------
sidecars=() admins=()
for n in 0 1; do
  port=$(free_port) admin=$(free_port)
  mkdir -p "$WORK/sidecar-$n"
  sed "s/FAKE_ADDR/$fake_addr/g" "$T/routes.yaml" >"$WORK/sidecar-$n/routes.yaml"
  FAKE_API_KEY=fake-test-key LLMESH_LOG=warn "$TARGET/debug/llmesh-sidecar" --config "$WORK/sidecar-$n/routes.yaml" \
    --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" --access-log off \
    >"$WORK/sidecar-$n/log" 2>&1 &
  pids+=($!)
  sidecars+=("http://127.0.0.1:$port") admins+=("$admin")
done
for n in 0 1; do
  for _ in $(seq 100); do curl -fsS "http://127.0.0.1:${admins[$n]}/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -fsS "http://127.0.0.1:${admins[$n]}/readyz" >/dev/null || fail "sidecar $n not ready: $(cat "$WORK/sidecar-$n/log")"
done
ok "two sidecars serving, /metrics on their admin ports ${admins[*]}"


# --- the operator (a real kube-apiserver and etcd, as scripts/demo-k8s.sh runs it) ------------
export LLMESH_CACHE=${LLMESH_CACHE:-$REPO/.cache}
K=$LLMESH_CACHE/bin/kubectl HELM=$LLMESH_CACHE/bin/helm
for f in "$K" "$HELM"; do
  [[ -x "$f" ]] || fail "$f missing: run tests/controlplane/install.sh first (tests/run-all.sh does)"
done
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local until=$(($(date +%s) + $1)) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    (($(date +%s) < until)) || fail "timed out waiting for $what"
    sleep 0.2
  done
}
"$TARGET/debug/llmesh-testenv" up >"$WORK/controlplane.log" 2>&1 &
pids+=($!)
wait_for 120 "the control plane" grep -q '^export KUBECONFIG=' "$WORK/controlplane.log"
export KUBECONFIG
KUBECONFIG=$(sed -n 's/^export KUBECONFIG=//p' "$WORK/controlplane.log")
"$HELM" install llmesh "$CHART" -n llmesh-system --create-namespace >"$WORK/helm.log" 2>&1 || fail "helm install: $(cat "$WORK/helm.log")"
"$K" wait --for=condition=Established crd/llmroutes.llmesh.io crd/llmbudgets.llmesh.io >/dev/null
op_port=$(free_port) op_admin=$(free_port) sc_port=$(free_port) sc_admin=$(free_port)
# The chart's webhook pointed at this machine, so a Pod create is an admission review.
for i in 0 1; do
  printf '{"op":"remove","path":"/webhooks/%s/clientConfig/service"},{"op":"add","path":"/webhooks/%s/clientConfig/url","value":"https://127.0.0.1:%s/mutate-pods"},' "$i" "$i" "$op_port"
done | sed 's/^/[/; s/,$/]/' >"$WORK/webhook-patch.json"
"$K" patch mutatingwebhookconfiguration llmesh-sidecar-injector --type json --patch-file "$WORK/webhook-patch.json" >/dev/null
SERVER=$("$K" config view --raw -o jsonpath='{.clusters[0].cluster.server}')
CA_FILE=$("$K" config view --raw -o jsonpath='{.clusters[0].cluster.certificate-authority}')
OP_TOKEN=$("$K" create token llmesh-operator -n llmesh-system --duration 1h)
cat >"$WORK/operator.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters: [{name: t, cluster: {server: "$SERVER", certificate-authority: "$CA_FILE"}}]
users: [{name: llmesh-operator, user: {token: "$OP_TOKEN"}}]
contexts: [{name: t, context: {cluster: t, user: llmesh-operator, namespace: llmesh-system}}]
current-context: t
KC
chmod 600 "$WORK/operator.kubeconfig"
KUBECONFIG="$WORK/operator.kubeconfig" "$TARGET/debug/llmesh-operator" --namespace llmesh-system \
  --listen "127.0.0.1:$op_port" --admin-listen "127.0.0.1:$op_admin" \
  --tls-san 127.0.0.1 --operator-url "https://127.0.0.1:$op_port" >"$WORK/operator.log" 2>&1 &
pids+=($!)
wait_for 30 "the operator's /readyz" curl -sf "http://127.0.0.1:$op_admin/readyz"
has_ca_bundle() { [ -n "$("$K" get mutatingwebhookconfiguration llmesh-sidecar-injector -o jsonpath='{.webhooks[0].clientConfig.caBundle}')" ]; }
wait_for 30 "the operator to set the webhook's caBundle" has_ca_bundle
"$K" create namespace demo >/dev/null
"$K" label namespace demo llmesh.io/inject=enabled >/dev/null
"$K" apply -n demo -f "$REPO/examples/k8s/" >/dev/null
"$K" create serviceaccount app -n demo >/dev/null
# A route whose Secret is missing: a Warning Event (llmesh_operator_events_total).
"$K" apply -n demo -f - >/dev/null <<'ROUTE'
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata: {name: orphan}
spec:
  backends: [{name: gone, provider: openai, model: gpt-4o-mini-2024-07-18, secretRef: {name: no-such-secret, key: api-key}}]
ROUTE
"$K" apply -n demo -f - >/dev/null <<'POD'
apiVersion: v1
kind: Pod
metadata: {name: app}
spec:
  serviceAccountName: app
  containers: [{name: app, image: registry.example/app:1}]
POD
"$K" wait -n demo --for=condition=Ready llmroute/chat --timeout=30s >/dev/null
"$K" create token app -n demo --audience llmesh --bound-object-kind Pod --bound-object-name app >"$WORK/token"
"$K" get secret llmesh-operator-tls -n llmesh-system -o jsonpath='{.data.ca\.crt}' | base64 -d >"$WORK/ca.crt"
LLMESH_LOG=warn "$TARGET/debug/llmesh-sidecar" --operator "https://127.0.0.1:$op_port" --operator-ca "$WORK/ca.crt" \
  --token-file "$WORK/token" --snapshot-cache "$WORK/snapshot.json" \
  --listen "127.0.0.1:$sc_port" --admin-listen "127.0.0.1:$sc_admin" --access-log off >"$WORK/sidecar-op.log" 2>&1 &
pids+=($!)
wait_for 30 "the operator-fed sidecar's /readyz" curl -sf "http://127.0.0.1:$sc_admin/readyz"
ok "operator (admin port $op_admin) and an operator-fed sidecar (admin port $sc_admin) on a real API server"

# --- Prometheus ------------------------------------------------------------------------------
prom_port=$(free_port)
cat >"$WORK/prometheus.yml" <<YAML
global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: [$WORK/rules.yaml]
scrape_configs:
  - job_name: llmesh-sidecars
    static_configs:
      - targets: ["127.0.0.1:${admins[0]}"]
        labels: {namespace: team-a, pod: app-0}
      - targets: ["127.0.0.1:${admins[1]}"]
        labels: {namespace: team-a, pod: app-1}
      - targets: ["127.0.0.1:$sc_admin"]
        labels: {namespace: demo, pod: app}
  - job_name: llmesh-operator
    static_configs:
      - targets: ["127.0.0.1:$op_admin"]
        labels: {namespace: llmesh-system, pod: llmesh-operator-0}
YAML
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
  --web.listen-address="127.0.0.1:$prom_port" --log.level=warn >"$WORK/prometheus.log" 2>&1 &
pids+=($!)
PROM=http://127.0.0.1:$prom_port
for _ in $(seq 100); do curl -fsS "$PROM/-/ready" >/dev/null 2>&1 && break; sleep 0.2; done
curl -fsS "$PROM/-/ready" >/dev/null || fail "prometheus not ready: $(cat "$WORK/prometheus.log")"
ok "prometheus $(prometheus --version 2>&1 | head -1 | awk '{print $3}') on $PROM"

# A reload (changed bytes, same routes) so llmesh_config_reloads_total has a series; route
# edits, so the operator fans snapshots (deltas) out to the sidecar waiting on a poll.
(sleep 3; for n in 0 1; do echo "# reloaded" >>"$WORK/sidecar-$n/routes.yaml"; done) &
pids+=($!)
(for w in 70 60 50 40 30 20 10 80 70 60 50 40 30 20 10; do
  sleep 2
  "$K" patch llmroute chat -n demo --type json -p "[{\"op\":\"replace\",\"path\":\"/spec/backends/0/weight\",\"value\":$w}]" >/dev/null 2>&1 || true
done) &
pids+=($!)

python3 "$T/check.py" "$PROM" "$(IFS=,; echo "${sidecars[*]}")" "$CHART/dashboards" "$WORK/rules.yaml" 2>&1 || fail "a dashboard query or rule expression returned no data (above)"
ok "every dashboard query and rule expression returned data with the labels it groups by"
