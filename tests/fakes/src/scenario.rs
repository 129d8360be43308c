//! Scenarios: how the fake behaves, chosen by a path prefix so that a backend's `baseUrl` picks
//! it (`http://127.0.0.1:PORT/s/<scenario>[,<option>=<value>...]/v1`).
//!
//! The whole segment (name and options) is the scenario's identity: counted scenarios such as
//! `fail-first-2-then-ok` keep one counter per distinct segment, so a test that wants fresh state
//! adds an option of its own (`fail-first-2-then-ok,id=t7`).

use std::time::Duration;

/// What the fake does with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A correct answer, in full detail.
    Ok,
    /// A correct answer with the least work possible (benchmarks): no recording, no delays.
    Fast,
    /// The provider's error answer for this status (401, 429, 500, 502, 503, 504, 529).
    Status(u16),
    /// Accept the request and never answer.
    Hang,
    /// Send the response headers (200) and then nothing.
    HangBeforeFirstByte,
    /// Close the connection after `after` chunks (streams) or half the body.
    ResetMidStream,
    /// A correct answer with `interval` between chunks.
    SlowChunks,
    /// 200 with a JSON content type and a body that is not valid JSON.
    MalformedJson,
    /// 200 `text/html`: a captive portal or a misrouted proxy.
    WrongContentType,
    /// The provider's 400 for a prompt over the model's context window.
    ContextLength,
    /// The provider's safety filter stops the answer (Gemini's blocks, Anthropic's `refusal`,
    /// OpenAI's `content_filter`).
    Safety,
    /// The first N requests behave as `with` (default 503), the rest as `ok`.
    FailFirst(u32),
}

/// Tunables given after the scenario name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Delay before the response headers.
    pub latency: Duration,
    /// Delay between streamed chunks.
    pub interval: Duration,
    /// Chunks sent before `reset-mid-stream` cuts the connection.
    pub after: usize,
    /// The `retry-after` of 429 and 503 answers; `None` sends no header.
    pub retry_after: Option<Duration>,
    /// What counted scenarios fail with.
    pub with: Kind,
    /// Words in the answer (the default echoes the prompt).
    pub words: Option<usize>,
    /// `safety`: the answer is blocked rather than the prompt (`block=answer`).
    pub block_answer: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            interval: Duration::ZERO,
            after: 3,
            retry_after: Some(Duration::from_secs(1)),
            with: Kind::Status(503),
            words: None,
            block_answer: false,
        }
    }
}

/// A parsed scenario segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    /// What to do.
    pub kind: Kind,
    /// How.
    pub options: Options,
}

/// Every scenario name, for error messages.
pub const NAMES: &str = "ok, fast, 401, 429, 500, 502, 503, 504, 529, hang, \
    hang-before-first-byte, reset-mid-stream, slow-chunks, malformed-json, wrong-content-type, \
    context-length, safety, fail-first-N-then-ok";

fn named(name: &str) -> Option<Kind> {
    Some(match name {
        "ok" => Kind::Ok,
        "fast" => Kind::Fast,
        "401" | "429" | "500" | "502" | "503" | "504" | "529" => Kind::Status(name.parse().ok()?),
        "hang" => Kind::Hang,
        "hang-before-first-byte" => Kind::HangBeforeFirstByte,
        "reset-mid-stream" => Kind::ResetMidStream,
        "slow-chunks" => Kind::SlowChunks,
        "malformed-json" => Kind::MalformedJson,
        "wrong-content-type" => Kind::WrongContentType,
        "context-length" => Kind::ContextLength,
        "safety" => Kind::Safety,
        _ => {
            let n = name
                .strip_prefix("fail-first-")?
                .strip_suffix("-then-ok")?
                .parse()
                .ok()?;
            Kind::FailFirst(n)
        }
    })
}

/// Parses `100ms`, `2s`, `1.5s` or a bare number of milliseconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        (s, 1e-3)
    };
    let v: f64 = num.parse().ok()?;
    (v.is_finite() && v >= 0.0).then(|| Duration::from_secs_f64(v * scale))
}

impl Scenario {
    /// The scenario when the path has no `/s/...` prefix.
    pub fn ok() -> Self {
        Self {
            kind: Kind::Ok,
            options: Options::default(),
        }
    }

    /// Parses a segment such as `slow-chunks,interval=50ms` or `fail-first-2-then-ok,with=429`.
    pub fn parse(segment: &str) -> Result<Self, String> {
        let mut parts = segment.split(',');
        let name = parts.next().unwrap_or_default();
        let kind =
            named(name).ok_or_else(|| format!("unknown fake scenario `{name}`; known: {NAMES}"))?;
        let mut options = Options::default();
        if kind == Kind::SlowChunks {
            options.interval = Duration::from_millis(100);
        }
        for opt in parts {
            let (k, v) = opt.split_once('=').unwrap_or((opt, ""));
            let dur = || {
                parse_duration(v).ok_or_else(|| format!("option `{k}`: `{v}` is not a duration"))
            };
            match k {
                "latency" => options.latency = dur()?,
                "interval" => options.interval = dur()?,
                "after" => {
                    options.after = v
                        .parse()
                        .map_err(|_| format!("option `after`: `{v}` is not a count"))?;
                }
                "retry-after" if v == "none" => options.retry_after = None,
                "retry-after" => options.retry_after = Some(dur()?),
                "words" => {
                    options.words = Some(
                        v.parse()
                            .map_err(|_| format!("option `words`: `{v}` is not a count"))?,
                    );
                }
                "with" => {
                    options.with = match named(v) {
                        Some(Kind::FailFirst(_) | Kind::Fast) | None => {
                            return Err(format!(
                                "option `with`: `{v}` is not a failure scenario; known: {NAMES}"
                            ));
                        }
                        Some(k) => k,
                    };
                }
                "block" => {
                    options.block_answer = match v {
                        "prompt" => false,
                        "answer" => true,
                        _ => return Err(format!("option `block`: `{v}` is not prompt or answer")),
                    };
                }
                // Free-form options only make the segment distinct (fresh counters per test).
                "id" => {}
                _ => {
                    return Err(format!(
                        "unknown option `{k}`; known: latency, interval, after, retry-after, words, with, block, id"
                    ));
                }
            }
        }
        Ok(Self { kind, options })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_options() {
        let s = Scenario::parse("fail-first-2-then-ok,with=429,retry-after=200ms,id=x").unwrap();
        assert_eq!(s.kind, Kind::FailFirst(2));
        assert_eq!(s.options.with, Kind::Status(429));
        assert_eq!(s.options.retry_after, Some(Duration::from_millis(200)));
        let s = Scenario::parse("slow-chunks").unwrap();
        assert_eq!(s.options.interval, Duration::from_millis(100));
        let s = Scenario::parse("reset-mid-stream,after=5,interval=1.5s").unwrap();
        assert_eq!(s.kind, Kind::ResetMidStream);
        assert_eq!(s.options.after, 5);
        assert_eq!(s.options.interval, Duration::from_millis(1500));
        let s = Scenario::parse("safety,block=answer").unwrap();
        assert_eq!((s.kind, s.options.block_answer), (Kind::Safety, true));
        assert_eq!(Scenario::parse("529").unwrap().kind, Kind::Status(529));
        assert_eq!(
            Scenario::parse("429,retry-after=none")
                .unwrap()
                .options
                .retry_after,
            None
        );
    }

    #[test]
    fn rejects_unknown_names_and_options() {
        assert!(Scenario::parse("teapot").unwrap_err().contains("known: ok"));
        assert!(Scenario::parse("ok,colour=red").is_err());
        assert!(Scenario::parse("fail-first-1-then-ok,with=fast").is_err());
        assert!(Scenario::parse("slow-chunks,interval=soon").is_err());
        assert!(Scenario::parse("safety,block=everything").is_err());
    }
}
