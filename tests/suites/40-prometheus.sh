#!/usr/bin/env bash
# The chart's dashboards and rules against a real Prometheus:
#   - `promtool check rules` on charts/llmesh/rules/*.yaml, and on every dashboard query (each
#     wrapped in a recording rule, so a query that does not parse fails here by panel);
#   - two sidecars (built-in mock provider, tests/prometheus/routes.yaml) on loopback, with
#     --admin-listen; Prometheus scrapes both admin ports every second (target labels namespace
#     and pod, as the chart's PodMonitor adds) and evaluates the rule group every second;
#   - tests/prometheus/check.py drives traffic (A/B split, fallbacks, retries, cache hits, cut
#     streams, an open circuit, a spent budget) and evaluates every panel query and every rule
#     expression through /api/v1/query: each must return data with the labels it groups by.
#     Alert conditions are evaluated operand by operand (without their comparison).
# Not evaluated for data: expressions on operator metrics (llmesh_operator_*, and the sidecars'
# llmesh_config_deltas_total, which only moves under an operator); they are still parsed.
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
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi
for bin in llmesh-sidecar; do
  [[ -x "$TARGET/debug/$bin" ]] || fail "$TARGET/debug/$bin missing: run cargo build --bins first"
done

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

# --- two sidecars ----------------------------------------------------------------------------
sidecars=() admins=()
for n in 0 1; do
  port=$(free_port) admin=$(free_port)
  mkdir -p "$WORK/sidecar-$n"
  cp "$T/routes.yaml" "$WORK/sidecar-$n/routes.yaml"
  LLMESH_LOG=warn "$TARGET/debug/llmesh-sidecar" --config "$WORK/sidecar-$n/routes.yaml" \
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
YAML
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
  --web.listen-address="127.0.0.1:$prom_port" --log.level=warn >"$WORK/prometheus.log" 2>&1 &
pids+=($!)
PROM=http://127.0.0.1:$prom_port
for _ in $(seq 100); do curl -fsS "$PROM/-/ready" >/dev/null 2>&1 && break; sleep 0.2; done
curl -fsS "$PROM/-/ready" >/dev/null || fail "prometheus not ready: $(cat "$WORK/prometheus.log")"
ok "prometheus $(prometheus --version 2>&1 | head -1 | awk '{print $3}') on $PROM"

# A reload (changed bytes, same routes) so llmesh_config_reloads_total has a series.
(sleep 3; for n in 0 1; do echo "# reloaded" >>"$WORK/sidecar-$n/routes.yaml"; done) &
pids+=($!)

python3 "$T/check.py" "$PROM" "$(IFS=,; echo "${sidecars[*]}")" "$CHART/dashboards" "$CHART/rules/llmesh.yaml" \
  'llmesh_operator_|llmesh_config_deltas_total' 2>&1 || fail "a dashboard query or rule expression returned no data (above)"
ok "every dashboard query and rule expression returned data with the labels it groups by"
