//! Golden translations: each fixture under `tests/fixtures/` is an input in one wire format, and
//! its `insta` snapshot under `snapshots/` is what the translation makes of it. A changed or
//! missing snapshot fails the test (with `CI` set, insta writes nothing). After a deliberate
//! change, `INSTA_UPDATE=always cargo test -p llmesh-sidecar --test golden` (or
//! `cargo insta test --review`) rewrites the snapshots; review the diff before committing it.
//!
//! Each binary-level harness also checks what a snapshot cannot: that a stream decodes the same
//! whichever way its bytes are split, and that the output is a valid event sequence.

// As in the library: errors are the cold path, `ApiError` stays unboxed.
#![allow(clippy::result_large_err)]

mod adapters;
mod anthropic;
mod gemini;
mod messages;
mod responses;
mod responses_native;

use std::cell::Cell;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// The fixture directory `tests/fixtures/<dir>`.
fn fixtures(dir: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir)
}

/// The parsed JSON file at `path`.
fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs `check` on every file `pattern` matches under `tests/fixtures/<dir>` (each file its own
/// snapshot), and fails unless at least `at_least` files matched: a fixture directory emptied by
/// mistake must not pass as "nothing differs".
fn each_fixture(dir: &str, pattern: &str, at_least: usize, mut check: impl FnMut(&Path)) {
    let seen = Cell::new(0usize);
    insta::glob!(&format!("../fixtures/{dir}"), pattern, |path| {
        seen.set(seen.get() + 1);
        check(path);
    });
    assert!(
        seen.get() >= at_least,
        "{dir}/{pattern}: {} fixtures, expected at least {at_least}",
        seen.get()
    );
}

/// What every clock stamp reads in a snapshot, once checked against the clock.
const CREATED: u64 = 1_700_000_000;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Runs `f`, then replaces every `key` stamp (Unix seconds) in its result with [`CREATED`],
/// after checking the translation took it from the clock while `f` ran.
fn pinning_clock(key: &str, f: impl FnOnce() -> Value) -> Value {
    let from = now();
    let mut v = f();
    let to = now();
    pin(&mut v, key, from, to);
    v
}

fn pin(v: &mut Value, key: &str, from: u64, to: u64) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if k == key {
                    let at = x.as_u64().unwrap_or_else(|| panic!("{key}: {x}"));
                    assert!((from..=to).contains(&at), "{key} {at} is not now");
                    *x = json!(CREATED);
                } else {
                    pin(x, key, from, to);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| pin(x, key, from, to)),
        _ => {}
    }
}
