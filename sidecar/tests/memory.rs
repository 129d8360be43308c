//! `memory`: what a burst freed goes back to the system. Alone in its own test binary, so the
//! resident size it reads is not moved by other tests.

use llmesh_sidecar::memory;

fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[test]
fn freed_memory_held_by_the_allocator_is_measured_and_given_back() {
    let Some(before) = memory::free_held() else {
        eprintln!("not glibc: nothing to measure");
        return;
    };
    // A burst: 96 MiB in 16 KiB buffers (below the mmap threshold, so on the heap), written so
    // their pages are resident, then every buffer freed but each 64th, as connections that
    // outlive the burst pin pieces of the heap.
    let mut bufs: Vec<Vec<u8>> = (0..6144).map(|i| vec![i as u8 | 1; 16 << 10]).collect();
    let kept: Vec<Vec<u8>> = bufs
        .iter_mut()
        .enumerate()
        .filter(|(i, _)| i % 64 == 0)
        .map(|(_, b)| std::mem::take(b))
        .collect();
    drop(bufs);
    let held = memory::free_held().unwrap();
    assert!(
        held > before + (64 << 20),
        "the allocator holds what was freed: {held} bytes free, {before} before"
    );
    assert!(held > memory::TRIM_ABOVE, "enough to make trim_loop trim");
    let rss = resident_bytes();
    assert!(memory::trim(), "malloc_trim returned nothing");
    let after = resident_bytes();
    assert!(
        rss - after > 64 << 20,
        "resident {} MiB before the trim, {} MiB after",
        rss >> 20,
        after >> 20
    );
    // What is still in use is untouched.
    assert!(kept.iter().all(|b| b.len() == 16 << 10 && b[1] & 1 == 1));
}
