//! The SSE parser: the same bytes give the same events however the network cuts them, and an
//! event written back with `sse::frame` parses to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llmesh_fuzz::{parse_sse, splits};
use llmesh_sidecar::sse;

fuzz_target!(|data: &[u8]| {
    let cuts = splits(data);
    let whole = parse_sse(&cuts[0]);
    for pieces in &cuts[1..] {
        assert_eq!(
            parse_sse(pieces),
            whole,
            "cut into {} pieces: {:?}",
            pieces.len(),
            String::from_utf8_lossy(data)
        );
    }
    let Some(events) = whole else { return };
    for ev in &events {
        // A line break ends a line: neither the name nor the data can hold `\r`, nor the name `\n`.
        assert!(!ev.event.contains(['\r', '\n']), "{ev:?}");
        assert!(!ev.data.contains(&b'\r'), "{ev:?}");
        let mut framed = bytes::BytesMut::new();
        sse::frame(ev, &mut framed);
        assert_eq!(
            parse_sse(&[&framed]).as_deref(),
            Some(std::slice::from_ref(ev)),
            "framed as {:?}",
            String::from_utf8_lossy(&framed)
        );
    }
});
