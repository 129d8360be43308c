//! One structured JSON line per request, written off the request path by a background thread
//! in batches. No prompt text and no keys, ever.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use prometheus::IntCounter;
use serde::Serialize;

/// One request, as logged. Borrows everything: building a line allocates nothing but the
/// output buffer.
#[derive(Serialize, Debug, Default, Clone)]
pub struct Line<'a> {
    /// Time the request finished, Unix seconds, written as RFC 3339.
    #[serde(serialize_with = "rfc3339")]
    pub ts: u64,
    /// Always `access`.
    pub log: &'static str,
    /// `x-request-id`.
    pub request_id: &'a str,
    /// `chat`, `text_completion`, `embeddings`.
    pub op: &'static str,
    /// The path called.
    pub path: &'a str,
    /// The model the client asked for.
    pub model: &'a str,
    /// The route that served it.
    pub route: &'a str,
    /// The backend that answered (last tried on failure).
    pub backend: &'a str,
    /// The backend's provider.
    pub provider: &'a str,
    /// The A/B variant.
    pub variant: &'a str,
    /// The rule that chose the backend, for the rules strategy.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub rule: &'a str,
    /// HTTP status sent to the client.
    pub status: u16,
    /// Upstream attempts made.
    pub attempts: u32,
    /// Backends that failed before the one that answered.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub fallbacks: &'a [String],
    /// Whether the answer streamed.
    pub stream: bool,
    /// hit, miss, bypass or off.
    pub cache: &'static str,
    /// Total duration, ms.
    pub duration_ms: f64,
    /// Time to the first streamed byte, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<f64>,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Cached prompt tokens.
    pub cached_input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Whether token counts were estimated.
    pub tokens_estimated: bool,
    /// Cost, USD with six decimals.
    pub cost_usd: &'a str,
    /// Why it failed, a low-cardinality reason.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub error: &'a str,
    /// Whether the client went away before the end.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cancelled: bool,
}

fn rfc3339<S: serde::Serializer>(ts: &u64, s: S) -> Result<S::Ok, S::Error> {
    // Formatting a date costs more than the rest of the line: keep the last one per thread.
    thread_local! {
        static LAST: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if last.0 != *ts {
            *last = (*ts, crate::budget::rfc3339(*ts));
        }
        s.serialize_str(&last.1)
    })
}

/// Micro-dollars as a six-decimal USD string, written into `buf`.
pub fn usd(micro: u64, buf: &mut [u8; 24]) -> &str {
    let (mut whole, frac) = (micro / 1_000_000, micro % 1_000_000);
    let mut i = buf.len();
    let mut f = frac;
    for _ in 0..6 {
        i -= 1;
        buf[i] = b'0' + (f % 10) as u8;
        f /= 10;
    }
    i -= 1;
    buf[i] = b'.';
    loop {
        i -= 1;
        buf[i] = b'0' + (whole % 10) as u8;
        whole /= 10;
        if whole == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("0.000000")
}

/// How long the writer gathers lines before writing them: one `write` and no thread wake-up
/// per request (waking a thread per line cost about a third of the sidecar's CPU per request
/// at low rates). Lines also go out as soon as [`WAKE_AT`] bytes are waiting, and on shutdown.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Bytes waiting that make the writer go at once.
const WAKE_AT: usize = 64 * 1024;
/// Bytes waiting beyond which lines are dropped (and counted) rather than using more memory:
/// the output is stuck (a blocked pipe) or far slower than the requests.
const MAX_PENDING: usize = 4 * 1024 * 1024;

/// `--access-log`: whether one JSON line per request goes to stdout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Write the access log.
    On,
    /// Write none.
    Off,
}

/// Where access log lines go.
#[derive(Clone)]
pub struct AccessLog {
    shared: Option<Arc<Shared>>,
    dropped: IntCounter,
}

struct Shared {
    state: Mutex<Pending>,
    /// Wakes the writer: lines arrived in an empty buffer, [`WAKE_AT`] reached, or a flush.
    wake: Condvar,
    /// Wakes [`AccessLog::flush`] callers when the writer has written what they asked for.
    written: Condvar,
    max_pending: usize,
}

#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    /// Flushes asked for, and flushes done (the writer copies `asked` when it has written).
    asked: u64,
    done: u64,
}

impl AccessLog {
    /// Lines go to stdout from a background thread, in batches.
    pub fn stdout(dropped: IntCounter) -> Self {
        Self::to_writer(std::io::stdout(), FLUSH_INTERVAL, MAX_PENDING, dropped)
    }

    /// Lines go to `out` from a background thread, gathered for up to `interval`; beyond
    /// `max_pending` waiting bytes lines are dropped and counted rather than slowing requests.
    pub fn to_writer(
        out: impl Write + Send + 'static,
        interval: Duration,
        max_pending: usize,
        dropped: IntCounter,
    ) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            written: Condvar::new(),
            max_pending,
        });
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_loop(&writer, out, interval))
            .expect("spawn the access log thread");
        Self {
            shared: Some(shared),
            dropped,
        }
    }

    /// No access log.
    pub fn off(dropped: IntCounter) -> Self {
        Self {
            shared: None,
            dropped,
        }
    }

    /// Queues one line. Never blocks on the output: a short lock to append to the batch.
    pub fn write(&self, line: &Line<'_>) {
        let Some(shared) = &self.shared else { return };
        let mut p = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        if p.buf.len() >= shared.max_pending {
            drop(p);
            self.dropped.inc();
            return;
        }
        let start = p.buf.len();
        if serde_json::to_writer(&mut p.buf, line).is_err() {
            p.buf.truncate(start);
            return;
        }
        p.buf.push(b'\n');
        // The writer sleeps without a deadline while the buffer is empty, and gathers for up
        // to the interval once it is not: wake it for the first line, and when a batch is big.
        let wake = start == 0 || (start < WAKE_AT && p.buf.len() >= WAKE_AT);
        drop(p);
        if wake {
            shared.wake.notify_one();
        }
    }

    /// Writes every line queued so far, waiting up to `timeout`; for shutdown.
    pub fn flush(&self, timeout: Duration) {
        let Some(shared) = &self.shared else { return };
        let mut p = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        p.asked += 1;
        let want = p.asked;
        shared.wake.notify_one();
        let _ = shared
            .written
            .wait_timeout_while(p, timeout, |p| p.done < want)
            .map_err(|e| e.into_inner());
    }
}

fn write_loop(shared: &Shared, mut out: impl Write, interval: Duration) {
    let mut spare = Vec::new();
    let mut p = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        p = shared
            .wake
            .wait_while(p, |p| p.buf.is_empty() && p.asked == p.done)
            .unwrap_or_else(|e| e.into_inner());
        if p.asked == p.done {
            // Gather: more lines come in without waking anyone.
            p = shared
                .wake
                .wait_timeout_while(p, interval, |p| p.asked == p.done && p.buf.len() < WAKE_AT)
                .map(|(p, _)| p)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        std::mem::swap(&mut p.buf, &mut spare);
        let asked = p.asked;
        drop(p);
        if !spare.is_empty() {
            let _ = out.write_all(&spare);
            let _ = out.flush();
            // Keep a batch's worth of capacity, not the largest burst ever seen.
            spare.clear();
            spare.shrink_to(WAKE_AT);
        }
        p = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        if p.done != asked {
            p.done = asked;
            shared.written.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output the test can read while the writer thread holds it.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn lines(&self) -> Vec<serde_json::Value> {
            String::from_utf8(self.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        }
    }

    fn counter() -> IntCounter {
        IntCounter::new("dropped", "test").unwrap()
    }

    fn line(id: &str) -> Line<'_> {
        Line {
            log: "access",
            request_id: id,
            route: "chat",
            status: 200,
            ..Line::default()
        }
    }

    #[test]
    fn lines_are_batched_and_flush_writes_them_all() {
        let sink = Sink::default();
        // An interval far longer than the test: only flush can write these lines.
        let log = AccessLog::to_writer(sink.clone(), Duration::from_secs(3600), 1 << 20, counter());
        for i in 0..100 {
            log.write(&line(&format!("req-{i}")));
        }
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            sink.lines().is_empty(),
            "written before the interval or a flush"
        );
        log.flush(Duration::from_secs(5));
        let lines = sink.lines();
        assert_eq!(lines.len(), 100);
        assert_eq!(lines[0]["request_id"], "req-0");
        assert_eq!(lines[99]["request_id"], "req-99");
        assert_eq!(lines[42]["route"], "chat");
        // Later lines go out after the next flush, in order.
        log.write(&line("late"));
        log.flush(Duration::from_secs(5));
        assert_eq!(sink.lines().len(), 101);
        assert_eq!(sink.lines()[100]["request_id"], "late");
    }

    #[test]
    fn lines_go_out_within_the_interval_without_a_flush() {
        let sink = Sink::default();
        let log = AccessLog::to_writer(sink.clone(), Duration::from_millis(20), 1 << 20, counter());
        log.write(&line("one"));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sink.lines().is_empty() {
            assert!(std::time::Instant::now() < deadline, "never written");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(sink.lines()[0]["request_id"], "one");
    }

    #[test]
    fn a_stuck_output_drops_and_counts_lines_instead_of_growing() {
        /// An output that blocks until released, like a full pipe.
        struct Stuck(Arc<(Mutex<bool>, Condvar)>);
        impl Write for Stuck {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                let (open, cv) = &*self.0;
                let _g = cv.wait_while(open.lock().unwrap(), |o| !*o).unwrap();
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let dropped = counter();
        let log = AccessLog::to_writer(
            Stuck(gate.clone()),
            Duration::from_millis(1),
            4096,
            dropped.clone(),
        );
        // The first batch goes to the writer, which blocks on it; the rest pile up to the cap.
        log.write(&line("first"));
        std::thread::sleep(Duration::from_millis(50));
        for i in 0..1000 {
            log.write(&line(&format!("req-{i}")));
        }
        assert!(dropped.get() > 900, "dropped {}", dropped.get());
        let pending = log.shared.as_ref().unwrap().state.lock().unwrap().buf.len();
        assert!(pending < 4096 + 512, "pending {pending} bytes");
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        log.flush(Duration::from_secs(5));
    }

    #[test]
    fn usd_matches_the_money_formatter() {
        for micro in [
            0u64,
            1,
            999_999,
            1_000_000,
            2_500_000,
            123_456_789,
            u64::MAX,
        ] {
            let mut buf = [0u8; 24];
            assert_eq!(
                super::usd(micro, &mut buf),
                llmesh_api::money::format_usd(micro)
            );
        }
    }
}
