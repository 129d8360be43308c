#!/usr/bin/env bash
# Real clients (openai, anthropic, langchain, Vercel AI SDK, fetch) against the real sidecar binary.
set -euo pipefail
exec "$(dirname "$0")/../e2e/run.sh"
