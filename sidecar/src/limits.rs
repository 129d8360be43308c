//! Bounds against hostile or broken clients: how long a connection may take to send a request,
//! how many connections are open at once, and how many bytes of bodies all requests together
//! hold in memory ([`Buffers`]).
//!
//! Bytes are counted per request in a [`Held`]: the server opens one around each request (a
//! task-local, so the handler and the attempt loop reserve without it being passed down), and
//! keeps it until the response's last byte is written. A reservation that would take the total
//! past `--max-buffered-bytes` fails, and the request is answered 503 instead of the pod being
//! OOM-killed with every stream in it.

use std::cell::Cell;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};

use crate::error::ApiError;
use crate::transport::BoxError;

/// `--header-read-timeout`: from when a connection waits for a request to the end of its headers.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// `--idle-timeout`: a connection with no request in progress is closed after this.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// `--body-read-timeout`: the whole request body must arrive within this.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// `--max-connections` default: at most this many, and at most half the open-files limit.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// `--max-buffered-bytes`: request and answer bodies held at once, all requests together. Half
/// the 128 MiB the operator gives the sidecar, leaving the rest for connections and state.
pub const DEFAULT_MAX_BUFFERED_BYTES: usize = 64 << 20;

/// The connection and memory limits, as the flags set them.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Time to read a request's headers (HTTP/1.1, including the wait for the next request on a
    /// kept-alive connection, as hyper counts it).
    pub header_read_timeout: Duration,
    /// Time a connection may stay open with no request in progress.
    pub idle_timeout: Duration,
    /// Time to read a whole request body.
    pub body_read_timeout: Duration,
    /// Connections open at once; past it the oldest idle one is closed, or the new one refused.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// The one budget of bytes buffered in memory by all requests together.
#[derive(Debug)]
pub struct Buffers {
    used: AtomicUsize,
    max: usize,
}

impl Buffers {
    /// A budget of `max` bytes (0: no limit).
    pub fn new(max: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            max: if max == 0 { usize::MAX } else { max },
        }
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The budget (`usize::MAX` when unlimited).
    pub fn max(&self) -> usize {
        self.max
    }

    fn try_reserve(&self, n: usize) -> bool {
        // Compare-and-swap, not add-then-undo: a reservation that fails must not make a
        // concurrent one fail too.
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(n).filter(|&total| total <= self.max)
            })
            .is_ok()
    }

    fn release(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }
}

/// The bytes one request holds under [`Buffers`]; given back when dropped.
#[derive(Debug)]
pub struct Held {
    buffers: Arc<Buffers>,
    bytes: Cell<usize>,
}

impl Held {
    /// Nothing held yet.
    pub fn new(buffers: Arc<Buffers>) -> Self {
        Self {
            buffers,
            bytes: Cell::new(0),
        }
    }

    /// Bytes this request holds.
    pub fn bytes(&self) -> usize {
        self.bytes.get()
    }

    fn reserve(&self, n: usize) -> Result<(), Spent> {
        if self.buffers.try_reserve(n) {
            self.bytes.set(self.bytes.get() + n);
            Ok(())
        } else {
            Err(Spent {
                max: self.buffers.max,
            })
        }
    }
}

impl Held {
    fn release(&self, n: usize) {
        let n = n.min(self.bytes.get());
        self.bytes.set(self.bytes.get() - n);
        self.buffers.release(n);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.buffers.release(self.bytes.get());
    }
}

tokio::task_local! {
    /// The request being served on this task.
    pub static HELD: Held;
}

/// The budget has no room for more bytes.
#[derive(Debug, Clone, Copy)]
pub struct Spent {
    /// The budget.
    pub max: usize,
}

impl std::fmt::Display for Spent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the sidecar holds its limit of {} bytes of request and answer bodies (--max-buffered-bytes)",
            self.max
        )
    }
}

impl std::error::Error for Spent {}

impl Spent {
    /// The 503 the client gets.
    pub fn error(&self) -> ApiError {
        let mut e = ApiError::overloaded(format!(
            "llmesh: this sidecar already holds {} bytes of request and answer bodies in memory, its limit (--max-buffered-bytes, LLMESH_MAX_BUFFERED_BYTES); retry after a second, or raise the limit together with the pod's memory limit",
            self.max
        ));
        e.reason = "buffered_bytes";
        e
    }
}

/// Counts `n` more bytes against the request being served (nothing outside a server request,
/// as in tests that call the handler directly).
pub fn reserve(n: usize) -> Result<(), Spent> {
    HELD.try_with(|h| h.reserve(n)).unwrap_or(Ok(()))
}

/// Gives back `n` bytes of the request being served before it ends: a buffer dropped on a
/// failure, so that readers at the limit together do not all fail before any memory comes back.
pub fn release(n: usize) {
    let _ = HELD.try_with(|h| h.release(n));
}

/// The 408 for a body that did not arrive within `--body-read-timeout`.
pub fn body_timeout_error(timeout: Duration) -> ApiError {
    let mut e = ApiError::bad_request(
        None,
        format!(
            "llmesh: the request body did not arrive within {:.1}s (--body-read-timeout, LLMESH_BODY_READ_TIMEOUT); send the whole body at once, or raise the limit",
            timeout.as_secs_f64()
        ),
    )
    .with_code("request_timeout");
    e.status = StatusCode::REQUEST_TIMEOUT;
    e.reason = "body_timeout";
    e
}

/// A request body whose bytes count against [`Buffers`] as they arrive.
pub struct Counted<B>(pub B);

impl<B> Body for Counted<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.0).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref()
                    && let Err(spent) = reserve(d.len())
                {
                    return Poll::Ready(Some(Err(Box::new(spent))));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

/// Parses a byte count: `67108864`, `64Mi`, `512Ki`, `1Gi` (also `MiB`, `KiB`, `GiB`).
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("`{s}` is not a byte count: write e.g. 64Mi, 512Ki or 67108864"))?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "Ki" | "KiB" => 10,
        "Mi" | "MiB" => 20,
        "Gi" | "GiB" => 30,
        other => {
            return Err(format!(
                "`{s}`: unknown unit `{other}`; use Ki, Mi or Gi (powers of 1024)"
            ));
        }
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("`{s}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reservation_past_the_budget_fails_and_drop_gives_bytes_back() {
        let b = Arc::new(Buffers::new(100));
        let one = Held::new(b.clone());
        assert!(one.reserve(60).is_ok());
        let two = Held::new(b.clone());
        assert!(two.reserve(30).is_ok());
        assert!(two.reserve(20).is_err(), "90 + 20 is over 100");
        assert_eq!(b.used(), 90, "a failed reservation takes nothing");
        drop(one);
        assert_eq!(b.used(), 30);
        assert!(two.reserve(70).is_ok());
        drop(two);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn zero_means_no_limit() {
        let b = Arc::new(Buffers::new(0));
        let h = Held::new(b.clone());
        assert!(h.reserve(usize::MAX / 2).is_ok());
    }

    #[test]
    fn byte_counts_parse_with_binary_units() {
        assert_eq!(parse_bytes("64Mi"), Ok(64 << 20));
        assert_eq!(parse_bytes("512KiB"), Ok(512 << 10));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert!(parse_bytes("64MB").unwrap_err().contains("Ki, Mi or Gi"));
        assert!(parse_bytes("lots").is_err());
    }
}
