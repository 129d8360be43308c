#!/usr/bin/env bash
# What the README promises about installing the chart, beyond what 25-chart checks:
#   - the README's values table is what scripts/values-reference.py writes from the chart
#     (every value described, values.yaml and values.schema.json agreeing on which exist)
#   - `helm package` makes a chart that lints and renders exactly what the chart directory
#     renders, with default and non-default values (the README's packaged-chart install)
# Uses helm from the test control plane's install (tests/controlplane/install.sh). A few seconds.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$(pwd)
export LLMESH_CACHE=${LLMESH_CACHE:-$REPO/.cache}
HELM=$LLMESH_CACHE/bin/helm
[ -x "$HELM" ] || { echo "helm not found at $HELM: run tests/controlplane/install.sh" >&2; exit 1; }
WORK=$(mktemp -d -t llmesh-package-XXXXXX)
trap 'rm -rf "$WORK"' EXIT

python3 scripts/values-reference.py --check

version=$(sed -n 's/^version: *//p' charts/llmesh/Chart.yaml | tr -d '"')
"$HELM" package charts/llmesh -d "$WORK" >/dev/null
pkg=$WORK/llmesh-$version.tgz
[ -f "$pkg" ] || { echo "helm package did not write $pkg" >&2; ls "$WORK" >&2; exit 1; }
"$HELM" lint --strict "$pkg" >/dev/null

for values in "" tests/chart/values-nondefault.yaml; do
  args=(-n llmesh-system --include-crds)
  [ -n "$values" ] && args+=(-f "$values")
  "$HELM" template llmesh charts/llmesh "${args[@]}" >"$WORK/dir.yaml"
  "$HELM" template llmesh "$pkg" "${args[@]}" >"$WORK/pkg.yaml"
  [ -s "$WORK/dir.yaml" ] || { echo "helm template rendered nothing" >&2; exit 1; }
  if ! diff -u "$WORK/dir.yaml" "$WORK/pkg.yaml" >"$WORK/diff"; then
    echo "the packaged chart renders differently from charts/llmesh (values: ${values:-default}):" >&2
    head -40 "$WORK/diff" >&2
    exit 1
  fi
  echo "packaged chart renders as the directory (values: ${values:-default}, $(grep -c '^kind:' "$WORK/dir.yaml") objects)"
done
