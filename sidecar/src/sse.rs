//! An incremental Server-Sent Events parser (the WHATWG event-stream format) that takes bytes in
//! whatever pieces the network delivers and yields whole events.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// One event: its `event:` name (empty when absent) and its `data:` lines joined by `\n`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, or empty.
    pub event: String,
    /// The `data:` payload.
    pub data: Bytes,
}

/// Accumulates bytes and splits them into events.
#[derive(Default, Debug)]
pub struct SseParser {
    buf: BytesMut,
    event: String,
    /// The event's only `data:` line so far, kept where it was read instead of copied.
    first: Option<BytesMut>,
    /// Its `data:` lines joined, once there is more than one (never empty then: they are
    /// joined by `\n`).
    data: BytesMut,
}

/// The largest event we hold while waiting for its end: a stream that never ends an event is broken.
pub const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

impl SseParser {
    /// Adds bytes; complete events are appended to `out`. Fails when one event grows past
    /// [`MAX_EVENT_BYTES`].
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<(), &'static str> {
        self.buf.extend_from_slice(chunk);
        while let Some(pos) = memchr::memchr2(b'\n', b'\r', &self.buf) {
            // A lone `\r` at the end may be the first half of `\r\n`: wait for more.
            let eol_len = if self.buf[pos] == b'\r' {
                if pos + 1 == self.buf.len() {
                    break;
                }
                if self.buf[pos + 1] == b'\n' { 2 } else { 1 }
            } else {
                1
            };
            let line = self.buf.split_to(pos);
            self.buf.advance(eol_len);
            self.line(line, out);
        }
        let held = self.first.as_ref().map_or(self.data.len(), BytesMut::len);
        if self.buf.len() + held > MAX_EVENT_BYTES {
            return Err("an event-stream event exceeded 16 MiB without ending");
        }
        Ok(())
    }

    /// Ends the stream: a final event without its blank line is still delivered.
    pub fn finish(&mut self, out: &mut Vec<SseEvent>) {
        if !self.buf.is_empty() {
            // A lone `\r` left at the end was held back as a possible `\r\n`: it ends the line.
            let line = self
                .buf
                .split_to(self.buf.len() - usize::from(self.buf.ends_with(b"\r")));
            self.line(line, out);
        }
        self.dispatch(out);
    }

    fn line(&mut self, mut line: BytesMut, out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line[0] == b':' {
            return; // comment, e.g. OpenRouter's `: OPENROUTER PROCESSING`
        }
        // The field name, and where its value starts (after `:` and one optional space).
        let (field_end, value_start) = match line.iter().position(|&b| b == b':') {
            Some(i) => (
                i,
                if line.get(i + 1) == Some(&b' ') {
                    i + 2
                } else {
                    i + 1
                },
            ),
            None => (line.len(), line.len()),
        };
        match &line[..field_end] {
            b"data" => {
                line.advance(value_start);
                if self.first.is_none() && self.data.is_empty() {
                    self.first = Some(line);
                } else {
                    if let Some(first) = self.first.take() {
                        // A second line: from now on the lines are joined in `data`.
                        self.data.extend_from_slice(&first);
                    }
                    self.data.extend_from_slice(b"\n");
                    self.data.extend_from_slice(&line);
                }
            }
            b"event" => {
                self.event = String::from_utf8_lossy(&line[value_start..]).into_owned();
            }
            _ => {} // id, retry and unknown fields do not matter to a proxy
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        let data = match self.first.take() {
            Some(only) => only.freeze(),
            None if !self.data.is_empty() => self.data.split().freeze(),
            None => {
                // No data line: nothing to dispatch.
                self.event.clear();
                return;
            }
        };
        out.push(SseEvent {
            event: std::mem::take(&mut self.event),
            data,
        });
    }
}

/// Writes `ev` back as one complete SSE frame (`event:` line when named, `data:` lines, blank
/// line): how passthrough streams hand an upstream event to the client.
pub fn frame(ev: &SseEvent, out: &mut BytesMut) {
    out.reserve(ev.event.len() + ev.data.len() + 16);
    if !ev.event.is_empty() {
        out.put_slice(b"event: ");
        out.put_slice(ev.event.as_bytes());
        out.put_slice(b"\n");
    }
    for line in ev.data.split(|&b| b == b'\n') {
        out.put_slice(b"data: ");
        out.put_slice(line);
        out.put_slice(b"\n");
    }
    out.put_slice(b"\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in_pieces(input: &[u8], piece: usize) -> Vec<SseEvent> {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        for c in input.chunks(piece) {
            p.push(c, &mut out).unwrap();
        }
        p.finish(&mut out);
        out
    }

    #[test]
    fn events_survive_any_split_point() {
        let input = b"event: message_start\ndata: {\"a\":1}\n\n: keep-alive\r\n\r\ndata: x\r\ndata: y\r\n\r\ndata: [DONE]\n\n";
        for piece in 1..input.len() {
            let ev = parse_in_pieces(input, piece);
            assert_eq!(ev.len(), 3, "piece {piece}");
            assert_eq!(ev[0].event, "message_start");
            assert_eq!(&ev[0].data[..], b"{\"a\":1}");
            assert_eq!(&ev[1].data[..], b"x\ny");
            assert_eq!(ev[1].event, "");
            assert_eq!(&ev[2].data[..], b"[DONE]");
        }
    }

    #[test]
    fn a_trailing_event_without_blank_line_is_kept() {
        let ev = parse_in_pieces(b"data: last", 3);
        assert_eq!(ev.len(), 1);
        assert_eq!(&ev[0].data[..], b"last");
    }

    #[test]
    fn an_endless_event_is_refused() {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        let big = vec![b'a'; MAX_EVENT_BYTES + 1];
        assert!(p.push(&big, &mut out).is_err());
    }
}
