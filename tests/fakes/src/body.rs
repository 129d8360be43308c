//! The response body: a whole buffer, or parts paced over time that may stop forever or break
//! the connection part-way, as real providers and networks do.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

/// How long a cut connection waits after its last part, so that part is flushed first.
const CUT_PAUSE: Duration = Duration::from_millis(5);

/// A response body of the fake.
pub enum FakeBody {
    /// One buffer (taken on the first poll).
    Full(Option<Bytes>),
    /// Parts sent one by one.
    Paced(Box<Paced>),
}

/// Parts sent with a delay between them, optionally cut off or left hanging.
pub struct Paced {
    parts: VecDeque<Bytes>,
    interval: Duration,
    cut_after: Option<usize>,
    hang_for: Option<Duration>,
    sent: usize,
    sleep: Option<Pin<Box<Sleep>>>,
    hanging: bool,
    cut_armed: bool,
}

impl FakeBody {
    /// A whole body.
    pub fn full(b: impl Into<Bytes>) -> Self {
        Self::Full(Some(b.into()))
    }

    /// No body.
    pub fn empty() -> Self {
        Self::Full(None)
    }

    /// `parts` with `interval` between them.
    pub fn paced(parts: Vec<Bytes>, interval: Duration) -> Self {
        Self::Paced(Box::new(Paced {
            parts: parts.into(),
            interval,
            cut_after: None,
            hang_for: None,
            sent: 0,
            sleep: None,
            hanging: false,
            cut_armed: false,
        }))
    }

    /// Breaks the connection after `n` parts: the client sees the body end without its proper
    /// terminator (HTTP/1.1 closes mid-chunked-body, HTTP/2 resets the stream).
    pub fn cut_after(mut self, n: usize) -> Self {
        if let Self::Paced(p) = &mut self {
            p.cut_after = Some(n);
        }
        self
    }

    /// After the last part, sends nothing for `d`, then breaks the connection.
    pub fn then_hang(mut self, d: Duration) -> Self {
        if let Self::Paced(p) = &mut self {
            p.hang_for = Some(d);
        }
        self
    }
}

fn broken(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionReset, what.to_string())
}

impl Body for FakeBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let p = match self.get_mut() {
            Self::Full(b) => return Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Self::Paced(p) => p,
        };
        if let Some(s) = &mut p.sleep {
            ready!(s.as_mut().poll(cx));
            p.sleep = None;
            if p.hanging {
                return Poll::Ready(Some(Err(broken("the fake gave up hanging"))));
            }
        }
        if p.cut_after == Some(p.sent) && !p.cut_armed {
            // Pause before breaking so the server flushes what was sent: a cut that also loses
            // the parts before it would look like a failure before the first byte.
            p.cut_armed = true;
            let mut s = Box::pin(tokio::time::sleep(CUT_PAUSE));
            if s.as_mut().poll(cx).is_pending() {
                p.sleep = Some(s);
                return Poll::Pending;
            }
        }
        if p.cut_after == Some(p.sent) {
            p.parts.clear();
            p.hang_for = None;
            return Poll::Ready(Some(Err(broken("reset by the fake (reset-mid-stream)"))));
        }
        if let Some(part) = p.parts.pop_front() {
            p.sent += 1;
            if !p.interval.is_zero() && !p.parts.is_empty() {
                p.sleep = Some(Box::pin(tokio::time::sleep(p.interval)));
            }
            return Poll::Ready(Some(Ok(Frame::data(part))));
        }
        if let Some(d) = p.hang_for.take() {
            p.hanging = true;
            let mut s = Box::pin(tokio::time::sleep(d));
            // Registers the waker; the sleep is long, so this is Pending.
            if s.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Some(Err(broken("the fake gave up hanging"))));
            }
            p.sleep = Some(s);
            return Poll::Pending;
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(b) => b.is_none(),
            Self::Paced(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Self::Full(None) => SizeHint::with_exact(0),
            Self::Paced(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test(start_paused = true)]
    async fn paced_parts_arrive_in_order_then_the_cut_breaks_the_body() {
        let parts = (0..5).map(|i| Bytes::from(format!("p{i}"))).collect();
        let mut b = FakeBody::paced(parts, Duration::from_millis(100)).cut_after(2);
        let t0 = tokio::time::Instant::now();
        let f1 = b.frame().await.unwrap().unwrap().into_data().unwrap();
        let f2 = b.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!((&f1[..], &f2[..]), (&b"p0"[..], &b"p1"[..]));
        assert_eq!(t0.elapsed(), Duration::from_millis(100));
        assert!(b.frame().await.unwrap().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_body_stays_silent_until_its_limit() {
        let mut b = FakeBody::paced(vec![], Duration::ZERO).then_hang(Duration::from_secs(60));
        let t0 = tokio::time::Instant::now();
        assert!(b.frame().await.unwrap().is_err());
        assert_eq!(t0.elapsed(), Duration::from_secs(60));
    }
}
