#!/usr/bin/env bash
# End-to-end client tests against the real llmesh-sidecar, with the fake provider (OpenAI,
# Anthropic and Gemini wire formats) and the built-in mock: the Python clients (openai,
# anthropic, langchain-openai; pytest), the Node clients (openai, the Vercel AI SDK, fetch;
# node --test), and the commands in README.md and docs/clients/curl.md (they need port 4000).
#
#   tests/e2e/run.sh [pytest args...]
#
# Needs Python 3.11+, Node 20+, Rust, and access to PyPI, npm and crates.io. The virtualenv lives
# in ${LLMESH_CACHE:-$REPO/.cache}/venv and is rebuilt only when requirements.txt changes.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${LLMESH_CACHE:-$REPO/.cache}"
VENV="$CACHE/venv"
REQS="$REPO/tests/e2e/requirements.txt"
NODE_DIR="$REPO/tests/clients/node"
PYTHON="${PYTHON:-python3}"

step() { printf '\n==> %s\n' "$*"; }

step "Python environment ($VENV)"
want="$(sha256sum "$REQS" | cut -d' ' -f1)"
if [[ ! -x "$VENV/bin/python" || "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" != "$want" ]]; then
  rm -rf "$VENV"
  mkdir -p "$CACHE"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQS"
  echo "$want" > "$VENV/.requirements.sha256"
else
  echo "requirements unchanged: reusing it"
fi

step "Node packages (npm ci in tests/clients/node)"
(cd "$NODE_DIR" && npm ci --no-audit --no-fund --loglevel=error)

step "Binaries (cargo build --bins)"
(cd "$REPO" && cargo build --bins --quiet)
export LLMESH_BIN_DIR="${LLMESH_BIN_DIR:-${CARGO_TARGET_DIR:-$REPO/target}/debug}"

status=0
step "Python: openai, anthropic, langchain-openai, curl (pytest tests/e2e)"
(cd "$REPO/tests/e2e" && "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@") || status=1

step "Node: openai, Vercel AI SDK, fetch (node --test tests/clients/node/test)"
(cd "$NODE_DIR" && node --test --test-concurrency=1 test/) || status=1

exit "$status"
