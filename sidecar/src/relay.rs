//! Streams an upstream answer to the client chunk by chunk as it arrives, translating on the
//! fly, with no buffering beyond one network read. Once the first byte has left, a failure ends
//! the stream with an error event, never with a clean end.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::account::Ticket;
use crate::internal::{Chunk, StreamEncoder, Usage};
use crate::providers::StreamDecoder;
use crate::proxy::StreamStart;
use crate::sse::{SseEvent, SseParser};
use crate::transport::{BoxError, UpstreamBody};

enum State {
    Streaming,
    /// Upstream is done; flush what is pending, then finish.
    Draining {
        error: Option<&'static str>,
    },
    Finished,
}

/// The client-facing body of a streamed answer.
pub struct Relay {
    pending: VecDeque<Bytes>,
    upstream: UpstreamBody,
    parser: SseParser,
    decoder: Box<dyn StreamDecoder>,
    encoder: Box<dyn StreamEncoder>,
    idle: Pin<Box<Sleep>>,
    idle_for: Duration,
    state: State,
    ticket: Option<Ticket>,
    events: Vec<SseEvent>,
    chunks: Vec<Chunk>,
    first_sent: bool,
}

/// The key of the backend a ticket's stream comes from.
fn backend_key(ticket: Option<&Ticket>) -> Option<&str> {
    crate::providers::key(&ticket?.backend_state()?.spec)
}

/// A chunk as the client may see it: one that carries the backend's key has it redacted.
fn scrubbed(c: Chunk, ticket: Option<&Ticket>) -> Chunk {
    match c {
        Chunk::Data(d) => Chunk::Data(crate::providers::scrub_answer(d, backend_key(ticket))),
        done => done,
    }
}

impl Relay {
    /// A relay starting with the chunks already read by the attempt loop.
    pub fn new(
        start: StreamStart,
        mut encoder: Box<dyn StreamEncoder>,
        idle_for: Duration,
        ticket: Ticket,
    ) -> Self {
        let mut pending = VecDeque::new();
        for c in start.head {
            encoder.chunk(scrubbed(c, Some(&ticket)), &mut pending);
        }
        let mut relay = Self {
            pending,
            upstream: start.body,
            parser: start.parser,
            decoder: start.decoder,
            encoder,
            idle: Box::pin(tokio::time::sleep(idle_for)),
            idle_for,
            state: State::Streaming,
            ticket: Some(ticket),
            events: Vec::new(),
            chunks: Vec::new(),
            first_sent: false,
        };
        if start.finished {
            relay.ended();
        }
        relay
    }

    fn count_error(&self, reason: &'static str) {
        if let Some(t) = &self.ticket
            && let Some(b) = t.backend_state()
        {
            let l = &b.labels;
            t.ledger
                .metrics
                .stream_errors
                .with_label_values(&[&l.route, &l.backend, reason])
                .inc();
        }
    }

    /// The upstream ended properly. A failure it reported in-band, in the client's own format
    /// (native passthrough), already reached the client: it is only counted.
    fn ended(&mut self) {
        let error = self.decoder.failure();
        if let Some(reason) = error {
            self.count_error(reason);
        }
        self.state = State::Draining { error };
    }

    fn fail(&mut self, reason: &'static str, message: &str) {
        self.count_error(reason);
        let message = crate::providers::redact(message, backend_key(self.ticket.as_ref()));
        self.encoder.error(
            &format!("llmesh: the upstream stream failed after it started: {message}"),
            &mut self.pending,
        );
        self.state = State::Draining {
            error: Some(reason),
        };
    }

    fn decode(&mut self, data: &[u8]) {
        if let Err(m) = self.parser.push(data, &mut self.events) {
            self.fail("malformed", m);
            return;
        }
        let events: Vec<SseEvent> = self.events.drain(..).collect();
        for ev in events {
            if let Err(e) = self.decoder.event(ev, &mut self.chunks) {
                for c in self.chunks.drain(..) {
                    self.encoder
                        .chunk(scrubbed(c, self.ticket.as_ref()), &mut self.pending);
                }
                let (reason, message) = (e.reason, e.message);
                self.fail(reason, &message);
                return;
            }
        }
        let mut done = false;
        for c in self.chunks.drain(..) {
            done |= c == Chunk::Done;
            self.encoder
                .chunk(scrubbed(c, self.ticket.as_ref()), &mut self.pending);
        }
        if done {
            self.ended();
        }
    }

    fn end_of_upstream(&mut self) {
        self.parser.finish(&mut self.events);
        let events: Vec<SseEvent> = self.events.drain(..).collect();
        for ev in events {
            if let Err(e) = self.decoder.event(ev, &mut self.chunks) {
                self.fail(e.reason, &e.message);
                return;
            }
        }
        let result = self.decoder.finish(&mut self.chunks);
        for c in self.chunks.drain(..) {
            self.encoder
                .chunk(scrubbed(c, self.ticket.as_ref()), &mut self.pending);
        }
        match result {
            Ok(()) => self.ended(),
            Err(e) => self.fail(e.reason, &e.message),
        }
    }

    fn usage(&self, ticket: &Ticket) -> Usage {
        match self.decoder.usage() {
            Some(u) => u,
            None => Usage {
                prompt: u64::from(ticket.prompt_tokens()),
                output: self.decoder.output_estimate(),
                estimated: true,
                ..Usage::default()
            },
        }
    }

    fn finish(&mut self, error: Option<&'static str>, cancelled: bool) {
        if let Some(t) = self.ticket.take() {
            let usage = self.usage(&t);
            t.finish(
                if cancelled { 499 } else { 200 },
                Some(usage),
                error.unwrap_or(""),
                cancelled,
            );
        }
        self.state = State::Finished;
    }
}

impl Body for Relay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(b) = this.pending.pop_front() {
                if !this.first_sent {
                    this.first_sent = true;
                    if let Some(t) = &mut this.ticket {
                        t.ttft = Some(t.start.elapsed());
                    }
                }
                return Poll::Ready(Some(Ok(Frame::data(b))));
            }
            match this.state {
                State::Finished => return Poll::Ready(None),
                State::Draining { error } => {
                    // Read the upstream to its end after [DONE] so the connection can be reused,
                    // but never wait on it.
                    if error.is_none()
                        && let Poll::Ready(Some(Ok(_))) =
                            Pin::new(&mut this.upstream).poll_frame(cx)
                    {
                        continue;
                    }
                    this.finish(error, false);
                    return Poll::Ready(None);
                }
                State::Streaming => {}
            }
            match Pin::new(&mut this.upstream).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    this.idle.as_mut().reset(Instant::now() + this.idle_for);
                    if let Ok(data) = frame.into_data() {
                        this.decode(&data);
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    let msg = crate::transport::error_chain(e.as_ref());
                    this.fail("reset", &format!("connection lost: {msg}"));
                }
                Poll::Ready(None) => this.end_of_upstream(),
                Poll::Pending => {
                    ready!(this.idle.as_mut().poll(cx));
                    let secs = this.idle_for.as_secs_f64();
                    this.fail(
                        "idle_timeout",
                        &format!("no data for {secs}s (timeouts.streamIdle)"),
                    );
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Finished) && self.pending.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if self.ticket.is_some() {
            // The client went away before the end: charge what was generated so far.
            self.finish(Some("client_cancelled"), true);
        }
    }
}
