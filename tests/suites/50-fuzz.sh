#!/usr/bin/env bash
# The fuzz targets (fuzz/, cargo-fuzz and libFuzzer, on the nightly toolchain):
#   - installs cargo-fuzz from crates.io into $LLMESH_CACHE/cargo-fuzz when missing;
#   - builds every target (debug assertions and overflow checks on, no sanitizer: the code
#     fuzzed is safe Rust, and AddressSanitizer would double the build and run time);
#   - replays each target's committed corpus (fuzz/corpus/TARGET), then fuzzes each target for
#     LLMESH_FUZZ_SECONDS (default 10) from a copy of it, so the repository is not modified.
# A crash, a failed property or a timeout fails the suite; the input that caused it is kept in
# fuzz/artifacts/TARGET/ and printed with the command that replays it.
# The long runs (1 CPU-hour per target) are not part of CI: docs/fuzzing.md.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
export LLMESH_CACHE=${LLMESH_CACHE:-$REPO/.cache}
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
SECONDS_PER_TARGET=${LLMESH_FUZZ_SECONDS:-10}
ok() { printf '  ok   %s\n' "$*"; }
fail() { printf '  FAIL %s\n' "$*" >&2; exit 1; }

rustup toolchain list 2>/dev/null | grep -q '^nightly' ||
  fail "the nightly toolchain is missing (rustup toolchain install nightly): cargo-fuzz needs it"
FUZZ_BIN=$LLMESH_CACHE/cargo-fuzz/bin
if [[ ! -x "$FUZZ_BIN/cargo-fuzz" ]]; then
  echo "installing cargo-fuzz (crates.io) into $FUZZ_BIN"
  cargo install -q cargo-fuzz --version 0.13.2 --locked --root "$LLMESH_CACHE/cargo-fuzz"
fi
export PATH=$FUZZ_BIN:$PATH
FUZZ=(cargo +nightly fuzz)
OPTS=(-s none --target-dir "$TARGET/fuzz")

cd "$REPO/fuzz"
t0=$(date +%s)
"${FUZZ[@]}" build "${OPTS[@]}" >"$LLMESH_CACHE/fuzz-build.log" 2>&1 ||
  fail "cargo fuzz build: $(grep -v '^ *Compiling' "$LLMESH_CACHE/fuzz-build.log" | tail -40)"
ok "built $("${FUZZ[@]}" list | wc -l) fuzz targets in $(($(date +%s) - t0))s"

WORK=$(mktemp -d -t llmesh-fuzz-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
for t in $("${FUZZ[@]}" list); do
  [[ -d corpus/$t ]] || fail "fuzz/corpus/$t is missing: run python3 fuzz/seed.py"
  mkdir -p "artifacts/$t" "$WORK/$t"
  cp -r "corpus/$t/." "$WORK/$t/"
  for mode in replay fuzz; do
    if [[ $mode == replay ]]; then
      args=(-runs=0)
    else
      args=(-max_total_time="$SECONDS_PER_TARGET")
    fi
    if ! "${FUZZ[@]}" run "${OPTS[@]}" "$t" "$WORK/$t" -- "${args[@]}" -timeout=10 -rss_limit_mb=2048 \
      -artifact_prefix="$REPO/fuzz/artifacts/$t/" >"$WORK/$t.$mode.log" 2>&1; then
      grep -E 'panicked at|assertion|ERROR: libFuzzer' -A 6 "$WORK/$t.$mode.log" | head -40 >&2 || tail -40 "$WORK/$t.$mode.log" >&2
      repro=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$WORK/$t.$mode.log" | tail -1)
      fail "$t ($mode): reproducer ${repro:-(none written)}; replay it with: cd fuzz && cargo +nightly fuzz run -s none $t ${repro:-}"
    fi
  done
  stats=$(grep -E '^(#[0-9]+|Done)' "$WORK/$t.fuzz.log" | grep -o 'cov: [0-9]*' | tail -1)
  runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$WORK/$t.fuzz.log")
  ok "$t: corpus of $(ls "corpus/$t" | wc -l) replayed; ${runs:-?} runs in ${SECONDS_PER_TARGET}s, ${stats:-cov: ?}"
done
