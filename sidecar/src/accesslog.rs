//! One structured JSON line per request, written off the request path by a background thread.
//! No prompt text and no keys, ever.

use std::io::Write;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use prometheus::IntCounter;
use serde::Serialize;

/// One request, as logged.
#[derive(Serialize, Debug, Default, Clone)]
pub struct Line {
    /// RFC 3339 time the request finished.
    pub ts: String,
    /// Always `access`.
    pub log: &'static str,
    /// `x-request-id`.
    pub request_id: String,
    /// `chat`, `text_completion`, `embeddings`.
    pub op: &'static str,
    /// The path called.
    pub path: String,
    /// The model the client asked for.
    pub model: String,
    /// The route that served it.
    pub route: String,
    /// The backend that answered (last tried on failure).
    pub backend: String,
    /// The backend's provider.
    pub provider: String,
    /// The A/B variant.
    pub variant: String,
    /// The rule that chose the backend, for the rules strategy.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub rule: String,
    /// HTTP status sent to the client.
    pub status: u16,
    /// Upstream attempts made.
    pub attempts: u32,
    /// Backends that failed before the one that answered.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<String>,
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
    pub cost_usd: String,
    /// Why it failed, a low-cardinality reason.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// Whether the client went away before the end.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cancelled: bool,
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
    pub fn write(&self, line: &Line) {
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
