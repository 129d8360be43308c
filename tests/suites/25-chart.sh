#!/usr/bin/env bash
# The Helm chart charts/llmesh, checked with the real helm and a real kube-apiserver:
#   - chart crds/ equal the top-level crds/; deploy/ holds only the chart's renderings
#     (scripts/render-deploy.sh --check: rendered.yaml, default values; rendered-namespaced.yaml,
#     secrets.namespaces=[team-a, team-b]), each created with strict validation below
#   - helm lint --strict, with default and non-default values (tests/chart/values-nondefault.yaml)
#   - bad values (tests/chart/bad/*.yaml) are refused by values.schema.json, naming the value
#   - files dropped into rules/ and dashboards/ become a PrometheusRule and ConfigMaps
#   - `helm install` with default values (the README's command), the non-default rendering
#     created with strict field validation (the Prometheus Operator's own CRDs installed), and
#     the stored objects checked (tests/chart/check.py)
#   - every Pod the chart makes is created in a namespace that enforces the restricted Pod
#     Security profile (the API server's admission decides)
#   - llmesh-operator started with the installed Deployment's arguments and the chart's RBAC
#     (its ServiceAccount's token): it becomes ready, leads, and sets the webhook's caBundle
# Uses the binaries tests/run-all.sh builds (builds them if absent); the Prometheus Operator's
# CRDs come from its Go module (go mod download, cached in Go's module cache). About 20 s.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$(pwd)
export LLMESH_CACHE=${LLMESH_CACHE:-$REPO/.cache}
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
CHART=charts/llmesh
T=tests/chart
OP_PORT=${LLMESH_CHART_OPERATOR_PORT:-28443}
ADMIN_PORT=${LLMESH_CHART_ADMIN_PORT:-28080}
PROM_OPERATOR=github.com/prometheus-operator/prometheus-operator@v0.80.1

WORK=$(mktemp -d -t llmesh-chart-XXXXXX)
pids=()
cleanup() {
  local code=$?
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
  done
  if ((code != 0)); then
    for log in "$WORK"/*.log; do
      [ -e "$log" ] && printf '\n--- %s (last 30 lines)\n' "$log" && tail -n 30 "$log"
    done
  fi
  rm -rf "$WORK"
  exit "$code"
}
trap cleanup EXIT INT TERM

fail() {
  echo "25-chart: FAIL: $*" >&2
  exit 1
}
ok() { echo "ok: $*"; }
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    ((SECONDS > deadline)) && fail "timed out waiting for $what"
    sleep 0.2
  done
}

tests/controlplane/install.sh >"$WORK/install.log" 2>&1 || fail "tests/controlplane/install.sh (log above)"
HELM=$LLMESH_CACHE/bin/helm
K=$LLMESH_CACHE/bin/kubectl

# --- static checks ---------------------------------------------------------------------------
diff -r crds "$CHART/crds" >&2 || fail "$CHART/crds differs from crds/: cp crds/*.yaml $CHART/crds/"
ok "chart crds/ equal crds/"

HELM=$HELM scripts/render-deploy.sh --check || fail "deploy/ is stale or holds a hand-kept file"
ok "deploy/ is the chart's rendering (default values; secrets.namespaces=[team-a, team-b])"

"$HELM" lint --strict "$CHART" >"$WORK/lint.log" 2>&1 || fail "helm lint, default values: $(cat "$WORK/lint.log")"
"$HELM" lint --strict "$CHART" -f "$T/values-nondefault.yaml" >"$WORK/lint.log" 2>&1 ||
  fail "helm lint, non-default values: $(cat "$WORK/lint.log")"
ok "helm lint --strict (default and non-default values)"

n=0
for bad in "$T"/bad/*.yaml; do
  want=$(sed -n 's/^# expect: //p' "$bad")
  [ -n "$want" ] || fail "$bad has no '# expect: ' line"
  if "$HELM" template x "$CHART" -f "$bad" >/dev/null 2>"$WORK/bad.err"; then
    fail "$bad was accepted; values.schema.json should refuse it with: $want"
  fi
  grep -qF -- "$want" "$WORK/bad.err" || fail "$bad refused without naming the value; want '$want', got: $(cat "$WORK/bad.err")"
  n=$((n + 1))
done
ok "$n bad values files refused by the schema, each naming the value"

# Drop-in files: a copy of the chart with a rule group and a dashboard added.
cp -r "$CHART" "$WORK/chart"
cp "$T/dropin/rule-group.yaml" "$WORK/chart/rules/"
cp "$T/dropin/chart-test.json" "$WORK/chart/dashboards/"
"$HELM" template llmesh "$WORK/chart" -n llmesh-system >"$WORK/default-dropin.yaml"
if grep -qE '^kind: (PrometheusRule|ConfigMap|ServiceMonitor)$' "$WORK/default-dropin.yaml"; then
  fail "default values render monitoring objects; they must be off by default"
fi
cp "$T/dropin/broken.yaml" "$WORK/chart/rules/"
if "$HELM" template mesh "$WORK/chart" -f "$T/values-nondefault.yaml" >/dev/null 2>"$WORK/broken.err" ||
  ! grep -qF 'rules/broken.yaml' "$WORK/broken.err"; then
  fail "a malformed rules/broken.yaml was not refused by name: $(cat "$WORK/broken.err")"
fi
rm "$WORK/chart/rules/broken.yaml"
"$HELM" template mesh "$WORK/chart" -n mesh-system -f "$T/values-nondefault.yaml" >"$WORK/nondefault.yaml"
"$HELM" template mesh "$WORK/chart" -n mesh-system -f "$T/values-nondefault.yaml" \
  --show-only templates/tests/test-ready.yaml >"$WORK/nondefault-test-pod.yaml"
ok "helm template: non-default values, with a dropped-in rule group and dashboard"

# --- a real API server ---------------------------------------------------------------------
if [[ ! -x "$TARGET/debug/llmesh-testenv" || ! -x "$TARGET/debug/llmesh-operator" ]]; then
  cargo build -q -p llmesh-testenv -p llmesh-operator --bins
fi
"$TARGET/debug/llmesh-testenv" up >"$WORK/controlplane.log" 2>&1 &
pids+=($!)
wait_for 120 "the control plane" grep -q '^export KUBECONFIG=' "$WORK/controlplane.log"
export KUBECONFIG
KUBECONFIG=$(sed -n 's/^export KUBECONFIG=//p' "$WORK/controlplane.log")

# Default values, as the README installs them.
"$HELM" install llmesh "$CHART" -n llmesh-system --create-namespace >"$WORK/install-default.log" 2>&1 ||
  fail "helm install (default values): $(cat "$WORK/install-default.log")"
grep -qF 'kubectl label namespace my-app llmesh.io/inject=enabled' "$WORK/install-default.log" ||
  fail "helm install printed no NOTES telling what to do next"
# Unknown or misplaced fields would be dropped silently by a plain create: ask strictly.
"$K" apply --server-side --dry-run=server --validate=strict --force-conflicts \
  -f deploy/rendered.yaml >"$WORK/strict.log" 2>&1 || fail "strict validation of the default rendering: $(cat "$WORK/strict.log")"
"$HELM" get manifest llmesh -n llmesh-system | "$K" get -o json -f - >"$WORK/default.json"
python3 "$T/check.py" default "$WORK/default.json" || fail "default install (above)"
ok "helm install with default values: every object created and as expected"

# Non-default values: the Prometheus Operator's CRDs (from its Go module) and the namespaces
# and PriorityClass the values name, then every rendered object created strictly.
prom_dir=$(cd "$WORK" && GOFLAGS=-mod=mod go mod download -json "$PROM_OPERATOR" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])') || fail "go mod download $PROM_OPERATOR"
for crd in servicemonitors podmonitors prometheusrules; do
  "$K" create -f "$prom_dir/example/prometheus-operator-crd/monitoring.coreos.com_$crd.yaml" >/dev/null
done
"$K" wait --for=condition=Established --timeout=60s \
  crd/servicemonitors.monitoring.coreos.com crd/podmonitors.monitoring.coreos.com \
  crd/prometheusrules.monitoring.coreos.com >/dev/null
for ns in mesh-system team-a team-b grafana legacy; do "$K" create namespace "$ns" >/dev/null; done
"$K" create priorityclass llmesh-critical --value=1000000 >/dev/null
"$K" apply --server-side --dry-run=server --validate=strict --force-conflicts \
  -f deploy/rendered-namespaced.yaml >"$WORK/strict.log" 2>&1 ||
  fail "strict validation of deploy/rendered-namespaced.yaml: $(cat "$WORK/strict.log")"
"$K" create --validate=strict -f "$WORK/nondefault.yaml" >"$WORK/create-nondefault.log" 2>&1 ||
  fail "creating the non-default rendering: $(cat "$WORK/create-nondefault.log")"
"$K" get -o json -f "$WORK/nondefault.yaml" >"$WORK/nondefault.json"
python3 "$T/check.py" nondefault "$WORK/nondefault.json" || fail "non-default install (above)"
ok "non-default rendering: every object created with strict validation and as expected"

# The restricted Pod Security profile, judged by the API server's PodSecurity admission: the
# Deployments' pod templates and the helm test Pods, created as Pods where it is enforced.
"$K" create namespace restricted >/dev/null
"$K" label namespace restricted pod-security.kubernetes.io/enforce=restricted >/dev/null
python3 - "$WORK" <<'PY' >"$WORK/pods.json"
import json, sys
work = sys.argv[1]
pods = []
for name in ("default", "nondefault"):
    for o in json.load(open(f"{work}/{name}.json"))["items"]:
        if o["kind"] == "Deployment":
            spec = o["spec"]["template"]["spec"]
            pods.append({"apiVersion": "v1", "kind": "Pod",
                         "metadata": {"name": f"{name}-operator", "labels": {"check": "restricted"}},
                         "spec": spec})
print(json.dumps({"apiVersion": "v1", "kind": "List", "items": pods}))
PY
"$K" create -n restricted -f "$WORK/pods.json" >"$WORK/psa.log" 2>&1 || fail "restricted profile: $(cat "$WORK/psa.log")"
"$HELM" get hooks llmesh -n llmesh-system | sed 's/namespace: llmesh-system/namespace: restricted/' |
  "$K" create -f - >"$WORK/psa.log" 2>&1 || fail "restricted profile (helm test Pod): $(cat "$WORK/psa.log")"
sed 's/namespace: mesh-system/namespace: restricted/' "$WORK/nondefault-test-pod.yaml" |
  "$K" create -f - >"$WORK/psa.log" 2>&1 || fail "restricted profile (helm test Pod): $(cat "$WORK/psa.log")"
ok "the operator's and the helm test's Pods pass the restricted Pod Security profile"

# --- the operator, run as the chart made it ----------------------------------------------------
SERVER=$("$K" config view --raw -o jsonpath='{.clusters[0].cluster.server}')
CA_FILE=$("$K" config view --raw -o jsonpath='{.clusters[0].cluster.certificate-authority}')

# run_operator WHICH NAME NAMESPACE WEBHOOK HTTPS_PORT ADMIN_PORT: starts llmesh-operator with the
# arguments and environment of the Deployment in $WORK/WHICH.json (listeners moved to loopback)
# and its ServiceAccount's token; it must become ready, take the Lease and set the webhook's
# caBundle, with no request refused by the chart's RBAC.
run_operator() {
  local which=$1 name=$2 ns=$3 webhook=$4 op_port=$5 admin_port=$6
  local token kubeconfig=$WORK/$which-operator.kubeconfig log=$WORK/$which-operator.log
  token=$("$K" create token "$name" -n "$ns" --duration 1h)
  cat >"$kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: t, cluster: {server: "$SERVER", certificate-authority: "$CA_FILE"}}]
users: [{name: $name, user: {token: "$token"}}]
contexts: [{name: t, context: {cluster: t, user: $name, namespace: $ns}}]
current-context: t
EOF
  chmod 600 "$kubeconfig"
  local -a args
  mapfile -t args < <(python3 - "$WORK/$which.json" "$op_port" "$admin_port" <<'PY'
import json, sys
items, op, admin = json.load(open(sys.argv[1]))["items"], sys.argv[2], sys.argv[3]
c = next(o for o in items if o["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
for a in c["args"]:
    if a.startswith("--listen="):
        a = f"--listen=127.0.0.1:{op}"
    elif a.startswith("--admin-listen="):
        a = f"--admin-listen=127.0.0.1:{admin}"
    print(a)
print("--tls-san=127.0.0.1")
print(f"--operator-url=https://127.0.0.1:{op}")
# The API server drops an empty value: a variable without valueFrom is "" then.
env = {e["name"]: e.get("value", "") for e in c["env"] if "valueFrom" not in e}
print("--secret-namespaces-env=" + env["LLMESH_SECRET_NAMESPACES"])
PY
  )
  # The last line carries the Deployment's LLMESH_SECRET_NAMESPACES, passed as that variable.
  [[ "${args[-1]:-}" == --secret-namespaces-env=* ]] || fail "$which: reading the Deployment's arguments failed"
  local secret_namespaces=${args[-1]#--secret-namespaces-env=}
  unset 'args[-1]'
  KUBECONFIG="$kubeconfig" POD_NAMESPACE="$ns" POD_NAME="$name-chart-test" \
    LLMESH_SECRET_NAMESPACES="$secret_namespaces" \
    "$TARGET/debug/llmesh-operator" "${args[@]}" >"$log" 2>&1 &
  pids+=($!)
  wait_for 60 "the $which operator's /readyz (log: $(basename "$log"))" \
    curl -sf "http://127.0.0.1:$admin_port/readyz"
  has_ca_bundle() {
    [ -n "$("$K" get mutatingwebhookconfiguration "$webhook" -o jsonpath='{.webhooks[1].clientConfig.caBundle}')" ]
  }
  wait_for 30 "the $which operator to set the caBundle of $webhook (log: $(basename "$log"))" has_ca_bundle
  local holder
  holder=$("$K" get lease "$name-leader" -n "$ns" -o jsonpath='{.spec.holderIdentity}')
  [[ "$holder" == "$name-chart-test" ]] || fail "$which: the leader Lease is held by '$holder'"
  if grep -qi 'forbidden' "$log"; then
    fail "$which: the operator was refused something by the chart's RBAC: $(grep -i forbidden "$log" | head -n 3)"
  fi
  ok "llmesh-operator with the $which values' arguments and RBAC: ready, leader, webhook caBundle set"
}

run_operator default llmesh-operator llmesh-system llmesh-sidecar-injector "$OP_PORT" "$ADMIN_PORT"
# secrets.namespaces needs an operator that has --secret-namespaces.
if "$TARGET/debug/llmesh-operator" --help | grep -q -- '--secret-namespaces'; then
  run_operator nondefault mesh-operator mesh-system mesh-injector $((OP_PORT + 1)) $((ADMIN_PORT + 1))
else
  echo "skipped: the operator run with the non-default values: this llmesh-operator has no --secret-namespaces yet"
fi
