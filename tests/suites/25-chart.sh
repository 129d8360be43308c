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
#   - webhook.certManager: the non-default values (issuerRef set) and tests/chart/values-certmanager.yaml
#     (the chart's own self-signed CA chain) created with strict validation, cert-manager's CRDs
#     installed, and checked: the serving Certificate, its Secret mounted, inject-ca-from
#   - every Pod the chart makes is created in a namespace that enforces the restricted Pod
#     Security profile (the API server's admission decides)
#   - llmesh-operator started with the installed Deployment's arguments and the chart's RBAC
#     (its ServiceAccount's token): it becomes ready, leads, and sets the webhook's caBundle; with
#     the non-default values' --tls-cert-dir (certificates made here with openssl, in place of
#     cert-manager's) it serves them and leaves the caBundle alone
# Uses the binaries tests/run-all.sh builds (builds them if absent); the Prometheus Operator's and
# cert-manager's CRDs come from their Go modules (go mod download, cached in Go's module cache).
# About 20 s.
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
CERT_MANAGER=github.com/cert-manager/cert-manager@v1.16.2

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
"$HELM" template llmesh "$CHART" -n cm-system -f "$T/values-certmanager.yaml" --skip-tests >"$WORK/certmanager.yaml"
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
# cert-manager's CRDs, as its module ships them (deploy/crds): Helm templates whose directives
# sit in YAML comments, except the labels, which are dropped here.
cm_dir=$(cd "$WORK" && GOFLAGS=-mod=mod go mod download -json "$CERT_MANAGER" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])') || fail "go mod download $CERT_MANAGER"
for crd in issuers clusterissuers certificates certificaterequests; do
  python3 - "$cm_dir/deploy/crds/crd-$crd.yaml" <<'PY' | "$K" create -f - >/dev/null || fail "creating cert-manager's $crd CRD"
import sys, yaml
crd = yaml.safe_load(open(sys.argv[1]))
crd["metadata"].pop("labels", None)
print(yaml.safe_dump(crd))
PY
done
"$K" wait --for=condition=Established --timeout=60s \
  crd/issuers.cert-manager.io crd/clusterissuers.cert-manager.io \
  crd/certificates.cert-manager.io crd/certificaterequests.cert-manager.io >/dev/null
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
"$K" create namespace cm-system >/dev/null
"$K" create --validate=strict -f "$WORK/certmanager.yaml" >"$WORK/create-certmanager.log" 2>&1 ||
  fail "creating the webhook.certManager rendering: $(cat "$WORK/create-certmanager.log")"
"$K" get -o json -f "$WORK/certmanager.yaml" >"$WORK/certmanager.json"
python3 "$T/check.py" certmanager "$WORK/certmanager.json" || fail "webhook.certManager install (above)"
ok "webhook.certManager rendering (the chart's own CA chain): created with strict validation and as expected"

# The restricted Pod Security profile, judged by the API server's PodSecurity admission: the
# Deployments' pod templates and the helm test Pods, created as Pods where it is enforced.
"$K" create namespace restricted >/dev/null
"$K" label namespace restricted pod-security.kubernetes.io/enforce=restricted >/dev/null
python3 - "$WORK" <<'PY' >"$WORK/pods.json"
import json, sys
work = sys.argv[1]
pods = []
for name in ("default", "nondefault", "certmanager"):
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
# caBundle, with no request refused by the chart's RBAC. A Deployment with --tls-cert-dir
# (webhook.certManager) gets a directory of certificates made here, as cert-manager's Secret
# would be mounted; the operator must serve them and leave the caBundle to cert-manager.
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
  local cert_dir=$WORK/$which-tls
  mapfile -t args < <(python3 - "$WORK/$which.json" "$op_port" "$admin_port" "$cert_dir" <<'PY'
import json, sys
items, op, admin, cert_dir = json.load(open(sys.argv[1]))["items"], sys.argv[2], sys.argv[3], sys.argv[4]
c = next(o for o in items if o["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
for a in c["args"]:
    if a.startswith("--listen="):
        a = f"--listen=127.0.0.1:{op}"
    elif a.startswith("--admin-listen="):
        a = f"--admin-listen=127.0.0.1:{admin}"
    elif a.startswith("--tls-cert-dir="):
        a = f"--tls-cert-dir={cert_dir}"
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
  local mounted=""
  if printf '%s\n' "${args[@]}" | grep -q -- '^--tls-cert-dir='; then
    mounted=1
    make_certs "$cert_dir" "$name" "$ns"
  fi
  KUBECONFIG="$kubeconfig" POD_NAMESPACE="$ns" POD_NAME="$name-chart-test" \
    LLMESH_SECRET_NAMESPACES="$secret_namespaces" \
    "$TARGET/debug/llmesh-operator" "${args[@]}" >"$log" 2>&1 &
  pids+=($!)
  wait_for 60 "the $which operator's /readyz (log: $(basename "$log"))" \
    curl -sf "http://127.0.0.1:$admin_port/readyz"
  ca_bundle() {
    "$K" get mutatingwebhookconfiguration "$webhook" -o jsonpath='{.webhooks[*].clientConfig.caBundle}'
  }
  has_ca_bundle() { [ -n "$(ca_bundle)" ]; }
  leads() {
    [[ "$("$K" get lease "$name-leader" -n "$ns" -o jsonpath='{.spec.holderIdentity}')" == "$name-chart-test" ]]
  }
  if [[ -z "$mounted" ]]; then
    wait_for 30 "the $which operator to set the caBundle of $webhook (log: $(basename "$log"))" has_ca_bundle
    leads || fail "$which: the leader Lease is held by someone else"
  else
    wait_for 30 "the $which operator to lead (log: $(basename "$log"))" leads
    # It serves the mounted certificate: a client trusting only the mounted ca.crt connects.
    local code
    code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$cert_dir/ca.crt" "https://127.0.0.1:$op_port/healthz") || true
    [[ "$code" != 000 ]] || fail "$which: no TLS connection trusting the mounted ca.crt (log: $(basename "$log"))"
    # Its certificate upkeep runs as soon as it leads, and would write the caBundle then; here
    # that is cert-manager's CA injector's to fill in.
    wait_for 30 "the $which operator to check its certificate as leader" grep -q 'became the leader' "$log"
    [ -z "$(ca_bundle)" ] || fail "$which: the operator wrote the caBundle of $webhook; with webhook.certManager cert-manager's CA injector does"
  fi
  if grep -qi 'forbidden' "$log"; then
    fail "$which: the operator was refused something by the chart's RBAC: $(grep -i forbidden "$log" | head -n 3)"
  fi
  if [[ -z "$mounted" ]]; then
    ok "llmesh-operator with the $which values' arguments and RBAC: ready, leader, webhook caBundle set"
  else
    ok "llmesh-operator with the $which values' arguments and RBAC: ready, leader, serving the mounted certificate, caBundle left to cert-manager"
  fi
}

# make_certs DIR NAME NAMESPACE: ca.crt, tls.crt and tls.key as cert-manager writes them into the
# serving Certificate's Secret (here a CA made with openssl, and a certificate for the Service's
# name and the loopback address the operator listens on here).
make_certs() {
  local d=$1 name=$2 ns=$3
  mkdir -p "$d"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj "/CN=chart-test-ca" -keyout "$d/ca.key" -out "$d/ca.crt" 2>"$d/openssl.log" &&
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$name.$ns.svc" \
      -keyout "$d/tls.key" -out "$d/tls.csr" 2>>"$d/openssl.log" &&
    printf 'subjectAltName=DNS:%s.%s.svc,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' "$name" "$ns" >"$d/ext" &&
    openssl x509 -req -in "$d/tls.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 1 \
      -extfile "$d/ext" -out "$d/tls.crt" 2>>"$d/openssl.log" ||
    fail "making certificates with openssl: $(cat "$d/openssl.log")"
}

run_operator default llmesh-operator llmesh-system llmesh-sidecar-injector "$OP_PORT" "$ADMIN_PORT"
# secrets.namespaces needs an operator that has --secret-namespaces.
if "$TARGET/debug/llmesh-operator" --help | grep -q -- '--secret-namespaces'; then
  run_operator nondefault mesh-operator mesh-system mesh-injector $((OP_PORT + 1)) $((ADMIN_PORT + 1))
else
  echo "skipped: the operator run with the non-default values: this llmesh-operator has no --secret-namespaces yet"
fi
