//! The snapshot and delta decoders (the JSON the operator pushes to sidecars) and delta
//! application. Properties: a decoded snapshot encodes back to itself; the delta from a base to
//! any snapshot, applied to that base, gives that snapshot; a decoded delta either applies and
//! yields exactly the version it announces, or is refused. Input that is no JSON is read as a
//! config file, and the snapshot it compiles to is checked the same way (with
//! `LLMESH_FUZZ_SEED_DIR` set, that snapshot and its delta are written there as JSON seeds).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use llmesh_api::SnapshotDelta;
use llmesh_api::compile::content_version;
use llmesh_api::manifest::{self, LocalSecrets};
use llmesh_api::snapshot::Snapshot;

/// The quickstart's routes and budget: the base deltas apply to.
fn base() -> &'static Snapshot {
    static BASE: OnceLock<Snapshot> = OnceLock::new();
    BASE.get_or_init(|| {
        let text = include_str!("../../examples/quickstart.yaml");
        let m = manifest::parse("quickstart.yaml", text, false).unwrap();
        let secrets = LocalSecrets::new(&m, []);
        manifest::compile("quickstart.yaml", &m, &secrets)
            .unwrap()
            .0
    })
}

/// Round trip, then the delta from the base to `s` applied to the base.
fn check_snapshot(base: &Snapshot, mut s: Snapshot) -> SnapshotDelta {
    let json = serde_json::to_vec(&s).unwrap();
    assert_eq!(serde_json::from_slice::<Snapshot>(&json).unwrap(), s);
    // As the compiler assembles one: routes sorted and unique by namespace and name.
    s.routes
        .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    s.routes
        .dedup_by(|a, b| (&a.namespace, &a.name) == (&b.namespace, &b.name));
    s.version = content_version(&s);
    let d = SnapshotDelta::between(
        (&base.version, &base.routes, &base.budgets),
        (&s.version, &s.routes, &s.budgets),
    );
    let json = serde_json::to_vec(&d).unwrap();
    assert_eq!(serde_json::from_slice::<SnapshotDelta>(&json).unwrap(), d);
    assert_eq!(d.apply(base), Ok(s));
    d
}

fuzz_target!(|data: &[u8]| {
    let base = base();
    if let Ok(s) = serde_json::from_slice::<Snapshot>(data) {
        check_snapshot(base, s);
    } else if serde_json::from_slice::<serde_json::Value>(data).is_err()
        && let Ok(text) = std::str::from_utf8(data)
        && let Ok(m) = manifest::parse("fuzz.yaml", text, true)
        && let Ok((s, _)) = manifest::compile("fuzz.yaml", &m, &LocalSecrets::new(&m, []))
    {
        let d = check_snapshot(base, s.clone());
        if let Ok(dir) = std::env::var("LLMESH_FUZZ_SEED_DIR") {
            for json in [
                serde_json::to_vec(&s).unwrap(),
                serde_json::to_vec(&d).unwrap(),
            ] {
                let name = format!("{dir}/seed-{:016x}", llmesh_fuzz::rng_for(&json).u64(..));
                std::fs::write(name, json).unwrap();
            }
        }
    }
    if let Ok(d) = serde_json::from_slice::<SnapshotDelta>(data) {
        let mut b = base.clone();
        b.version = d.base.clone();
        if let Ok(s) = d.apply(&b) {
            assert_eq!(s.version, d.version);
            assert_eq!(content_version(&s), d.version);
        }
    }
});
