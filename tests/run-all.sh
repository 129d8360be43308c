#!/usr/bin/env bash
# Runs every llmesh test: formatting, lints, unit and in-process tests, then the end-to-end
# suites against real parts (kube-apiserver + etcd, the real sidecar binary driven by the
# official OpenAI/Anthropic SDKs and the Vercel AI SDK, helm, Prometheus).
# Installs what it needs on a fresh machine (into .cache/), so it is also what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
export LLMESH_CACHE=${LLMESH_CACHE:-$REPO/.cache}
mkdir -p "$LLMESH_CACHE"

step() { printf '\n==> %s\n' "$*"; }
t0=$(date +%s)

step "toolchain components"
if command -v rustup >/dev/null 2>&1; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi

# The kube-apiserver build is long and partly network-bound (Go modules): start it now, beside
# the Rust build, and wait for it before the tests that need a control plane.
step "installing the test control plane in the background (log: $LLMESH_CACHE/install.log)"
tests/controlplane/install.sh >"$LLMESH_CACHE/install.log" 2>&1 &
install_pid=$!

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "building tests and binaries"
cargo test --workspace --locked --no-run
cargo build --workspace --bins --locked

step "waiting for the control plane install"
if ! wait "$install_pid"; then
  cat "$LLMESH_CACHE/install.log"
  echo "tests/controlplane/install.sh failed" >&2
  exit 1
fi
tail -n 5 "$LLMESH_CACHE/install.log"

step "unit, in-process and control-plane tests"
cargo test --workspace --locked

for suite in tests/suites/*.sh; do
  [ -e "$suite" ] || continue
  step "suite $(basename "$suite" .sh)"
  bash "$suite"
done

step "all tests passed in $(( $(date +%s) - t0 ))s"
