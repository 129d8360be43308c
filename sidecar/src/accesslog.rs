//! One structured JSON line per request, written off the request path by a background thread.
//! No prompt text and no keys, ever.

use std::io::Write;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

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

/// Where access log lines go.
#[derive(Clone)]
pub struct AccessLog {
    tx: Option<SyncSender<Vec<u8>>>,
    dropped: IntCounter,
}

impl AccessLog {
    /// Lines go to stdout through a bounded queue; when the queue is full lines are dropped and
    /// counted rather than slowing requests down.
    pub fn stdout(dropped: IntCounter) -> Self {
        let (tx, rx) = sync_channel::<Vec<u8>>(8_192);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_loop(rx, std::io::stdout()))
            .expect("spawn the access log thread");
        Self {
            tx: Some(tx),
            dropped,
        }
    }

    /// No access log.
    pub fn off(dropped: IntCounter) -> Self {
        Self { tx: None, dropped }
    }

    /// Queues one line.
    pub fn write(&self, line: &Line<'_>) {
        let Some(tx) = &self.tx else { return };
        let mut buf = Vec::with_capacity(512);
        if serde_json::to_writer(&mut buf, line).is_err() {
            return;
        }
        buf.push(b'\n');
        if let Err(TrySendError::Full(_)) = tx.try_send(buf) {
            self.dropped.inc();
        }
    }
}

fn write_loop(rx: Receiver<Vec<u8>>, out: std::io::Stdout) {
    let mut w = std::io::BufWriter::with_capacity(64 * 1024, out.lock());
    while let Ok(line) = rx.recv() {
        let _ = w.write_all(&line);
        // Batch whatever else is already queued, then flush once.
        while let Ok(more) = rx.try_recv() {
            let _ = w.write_all(&more);
        }
        let _ = w.flush();
    }
}

#[cfg(test)]
mod tests {
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
