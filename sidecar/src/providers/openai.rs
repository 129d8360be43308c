//! OpenAI and the OpenAI-compatible family (Azure OpenAI, OpenRouter, vLLM, Ollama, Mistral,
//! Groq, Together, DeepSeek, any other server) plus the mock, which speaks this format too.
//!
//! Bodies pass through untouched except for `model`, `stream_options.include_usage` (so streams
//! report usage) and per-provider quirks; answers pass through byte for byte, with usage read on
//! the side.

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::Full;
use memchr::memmem::Finder;
use serde::Deserialize;
use serde_json::{Map, Value};

use llmesh_api::ProviderKind;
use llmesh_api::snapshot::Backend;

use super::upstream::{self, Auth};
use super::{
    Chunk, Decoded, ErrorClass, Op, Provider, StreamDecoder, UpstreamError, Usage, excerpt, key,
    redact, redact_json, retry_after,
};
use crate::fields;
use crate::internal::OaUsage;
use crate::sse::SseEvent;

/// The OpenAI-compatible adapter.
pub struct OpenAiFamily;

fn path(op: Op) -> &'static str {
    match op {
        Op::Chat => "chat/completions",
        Op::Completion => "completions",
        Op::Embedding => "embeddings",
    }
}

/// Providers that reject `stream_options` but report usage in their last chunk anyway.
fn injects_stream_usage(kind: ProviderKind) -> bool {
    !matches!(kind, ProviderKind::Mistral)
}

/// Providers that only know `max_tokens`, not OpenAI's newer `max_completion_tokens`.
fn wants_max_tokens(kind: ProviderKind) -> bool {
    matches!(
        kind,
        ProviderKind::Mistral | ProviderKind::Together | ProviderKind::Ollama
    )
}

/// The URL for `op` on `backend`.
pub fn url(backend: &Backend, op: Op) -> String {
    match &backend.azure {
        Some(az) => format!(
            "{}/deployments/{}/{}?api-version={}",
            backend.base_url,
            az.deployment,
            path(op),
            az.api_version
        ),
        None => {
            // Per request: joined by hand, without the formatting machinery.
            let (base, path) = (backend.base_url.as_str(), path(op));
            let mut url = String::with_capacity(base.len() + 1 + path.len());
            url.push_str(base);
            url.push('/');
            url.push_str(path);
            url
        }
    }
}

/// Whether `backend` speaks OpenAI's Responses API. Only OpenAI itself: Azure serves it under
/// other URLs and versions, and most OpenAI-compatible servers have no `/responses` (or one
/// without built-in tools and stored state), so they get the translation, which works everywhere.
pub fn speaks_responses(backend: &Backend) -> bool {
    backend.provider == ProviderKind::Openai
}

impl Provider for OpenAiFamily {
    fn supports(&self, _op: Op) -> bool {
        true
    }

    fn speaks(&self, backend: &Backend, endpoint: crate::internal::Endpoint) -> bool {
        endpoint == crate::internal::Endpoint::Responses && speaks_responses(backend)
    }

    fn native_request(
        &self,
        backend: &Backend,
        native: &super::Native<'_>,
        stream: bool,
        max_tokens: Option<u32>,
    ) -> Result<Request<Full<Bytes>>, UpstreamError> {
        let bytes = responses::body(native, &backend.model, max_tokens);
        http_request(
            backend,
            format!("{}/responses", backend.base_url),
            bytes,
            stream,
        )
    }

    fn native_decode(&self, backend: &Backend, body: Bytes) -> Result<Decoded, UpstreamError> {
        responses::decode(body, key(backend))
    }

    fn native_stream(&self, backend: &Backend) -> Box<dyn StreamDecoder> {
        Box::new(responses::Passthrough::new(
            key(backend).map(str::to_string),
        ))
    }

    fn request(
        &self,
        backend: &Backend,
        op: Op,
        body: &Map<String, Value>,
        raw: Option<&[u8]>,
        stream: bool,
    ) -> Result<Request<Full<Bytes>>, UpstreamError> {
        let inject_usage = stream
            && op != Op::Embedding
            && injects_stream_usage(backend.provider)
            && fields::get(body, "stream_options")
                .and_then(|o| fields::get_in(o, "include_usage"))
                .and_then(Value::as_bool)
                != Some(true);
        let rename_max =
            wants_max_tokens(backend.provider) && fields::has(body, "max_completion_tokens");
        const USAGE: &[u8] = br#""stream_options":{"include_usage":true}"#;
        // The client's own bytes with the backend's model, when only the model (and perhaps
        // the usage option, absent from the body) changes.
        let adds_usage = inject_usage && !fields::has(body, "stream_options");
        let spliced = raw
            .filter(|_| !rename_max && (adds_usage || !inject_usage))
            .and_then(|raw| {
                let model = serde_json::to_vec(&backend.model).ok()?;
                crate::splice::replace(raw, "model", &model, if adds_usage { USAGE } else { b"" })
            });
        let bytes = if let Some(b) = spliced {
            Ok(b)
        } else if adds_usage && !rename_max {
            // The common case: add the field to the serialised body instead of copying the map.
            serde_json::to_vec(body).map(|mut v| {
                v.pop(); // the closing brace
                if !body.is_empty() {
                    v.push(b',');
                }
                v.extend_from_slice(USAGE);
                v.push(b'}');
                v
            })
        } else if inject_usage || rename_max {
            let mut b = body.clone();
            if inject_usage {
                let opts = b
                    .entry("stream_options")
                    .or_insert_with(|| Value::Object(Map::new()));
                if !opts.is_object() {
                    *opts = Value::Object(Map::new());
                }
                if let Some(o) = opts.as_object_mut() {
                    o.insert("include_usage".into(), Value::Bool(true));
                }
            }
            if rename_max && let Some(v) = b.remove("max_completion_tokens") {
                b.insert("max_tokens".into(), v);
            }
            serde_json::to_vec(&b)
        } else {
            serde_json::to_vec(body)
        }
        .map_err(upstream::encode_failed)?;

        http_request(backend, url(backend, op), bytes, stream)
    }

    fn error(
        &self,
        backend: &Backend,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> UpstreamError {
        classify(backend, status, headers, body)
    }

    fn decode(&self, backend: &Backend, _op: Op, body: Bytes) -> Result<Decoded, UpstreamError> {
        // Only usage and an error matter here; the rest is validated as JSON and skipped.
        let env: AnswerEnvelope = serde_json::from_slice(&body).map_err(|e| {
            UpstreamError::retryable(
                "malformed",
                format!(
                    "backend `{}` answered with malformed JSON: {e}",
                    backend.name
                ),
            )
        })?;
        if let Some(err) = env.error {
            return Err(UpstreamError {
                class: ErrorClass::Retryable,
                status: None,
                message: redact(&err.message(), key(backend)),
                retry_after: None,
                reason: "error_body",
                openai_body: None,
            });
        }
        Ok(Decoded {
            usage: env.usage(),
            body,
        })
    }

    fn stream(
        &self,
        backend: &Backend,
        _op: Op,
        client_wants_usage: bool,
    ) -> Box<dyn StreamDecoder> {
        Box::new(OpenAiStream {
            client_wants_usage,
            key: key(backend).map(str::to_string),
            usage: None,
            done: false,
            finished: false,
            content_chunks: 0,
        })
    }
}

/// The POST to `url` with the key (Bearer, or Azure's `api-key`) and the backend's headers.
fn http_request(
    backend: &Backend,
    url: String,
    bytes: Vec<u8>,
    stream: bool,
) -> Result<Request<Full<Bytes>>, UpstreamError> {
    let auth = if backend.provider == ProviderKind::Azure {
        Auth::Header("api-key")
    } else {
        Auth::Bearer
    };
    upstream::post(backend, url, auth, &[], bytes, stream)
}

#[derive(Deserialize, Default)]
struct Envelope {
    #[serde(default)]
    usage: Option<OaUsage>,
    #[serde(default)]
    x_groq: Option<XGroq>,
    #[serde(default)]
    choices: Option<Vec<ChoiceFinish>>,
    #[serde(default)]
    error: Option<ErrorBody>,
}

/// The parts of a complete answer the proxy reads.
#[derive(Deserialize, Default)]
struct AnswerEnvelope {
    #[serde(default)]
    usage: Option<OaUsage>,
    #[serde(default)]
    x_groq: Option<XGroq>,
    #[serde(default)]
    error: Option<ErrorBody>,
}

impl AnswerEnvelope {
    fn usage(&self) -> Option<Usage> {
        self.usage
            .as_ref()
            .or(self.x_groq.as_ref().and_then(|x| x.usage.as_ref()))
            .map(OaUsage::normalise)
    }
}

#[derive(Deserialize, Default)]
struct XGroq {
    #[serde(default)]
    usage: Option<OaUsage>,
}

#[derive(Deserialize, Default)]
struct ChoiceFinish {
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    message: Option<Value>,
    #[serde(default)]
    code: Option<Value>,
    #[serde(default, rename = "type")]
    kind: Option<Value>,
}

impl ErrorBody {
    fn message(&self) -> String {
        match &self.message {
            Some(Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => "(no message)".into(),
        }
    }
    fn code(&self) -> String {
        let code = match &self.code {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        };
        match &self.kind {
            Some(Value::String(s)) => format!("{code} {s}"),
            _ => code,
        }
    }
}

impl Envelope {
    fn usage(&self) -> Option<Usage> {
        self.usage
            .as_ref()
            .or(self.x_groq.as_ref().and_then(|x| x.usage.as_ref()))
            .map(OaUsage::normalise)
    }
}

/// Classifies an OpenAI-family error answer.
pub fn classify(
    backend: &Backend,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> UpstreamError {
    #[derive(Deserialize)]
    struct Wrapper {
        error: ErrorBody,
    }
    let key = key(backend);
    let parsed = serde_json::from_slice::<Wrapper>(body).ok();
    let (message, code) = match &parsed {
        Some(w) => (w.error.message(), w.error.code()),
        None => (excerpt(body, 300, key), String::new()),
    };
    let lower = message.to_lowercase();
    let (class, reason) = match status.as_u16() {
        408 => (ErrorClass::Retryable, "status_408"),
        429 => (ErrorClass::Retryable, "status_429"),
        500..=599 => (ErrorClass::Retryable, "status_5xx"),
        401 | 403 => (ErrorClass::Auth, "auth"),
        404 => (ErrorClass::NotFound, "not_found"),
        400 | 413 | 422
            if code.contains("context_length_exceeded")
                || lower.contains("maximum context length")
                || lower.contains("context length")
                || lower.contains("context window")
                || lower.contains("too many tokens")
                || lower.contains("prompt is too long") =>
        {
            (ErrorClass::ContextWindow, "context_window")
        }
        400 if code.contains("content_filter") || code.contains("content_policy") => {
            (ErrorClass::ContentPolicy, "content_policy")
        }
        _ => (ErrorClass::Client, "status_4xx"),
    };
    let safe = redact(&message, key);
    UpstreamError {
        class,
        status: Some(status),
        message: format!("{} {}", status.as_u16(), safe),
        retry_after: retry_after(headers),
        reason,
        // Only client errors are handed back, only when they parse as OpenAI errors, and with
        // every string in them redacted (a key can sit in any field, escaped or not).
        openai_body: if class == ErrorClass::Client && parsed.is_some() {
            redact_json(body, key)
        } else {
            None
        },
    }
}

struct OpenAiStream {
    client_wants_usage: bool,
    key: Option<String>,
    usage: Option<Usage>,
    done: bool,
    finished: bool,
    content_chunks: u64,
}

/// The keys every streamed chunk is searched for, each searcher built once: building one costs
/// more than searching a chunk.
static USAGE: std::sync::LazyLock<Finder<'static>> =
    std::sync::LazyLock::new(|| Finder::new(b"\"usage\""));
static FINISH_REASON: std::sync::LazyLock<Finder<'static>> =
    std::sync::LazyLock::new(|| Finder::new(b"\"finish_reason\""));

/// Whether `key` (a `"quoted"` JSON key) appears with a value other than `null`, in compact or
/// spaced JSON.
fn has_non_null(hay: &[u8], key: &Finder<'_>) -> bool {
    let Some(i) = key.find(hay) else {
        return false;
    };
    let rest = &hay[i + key.needle().len()..];
    let rest = rest
        .strip_prefix(b":")
        .or_else(|| rest.strip_prefix(b" :"))
        .unwrap_or(rest);
    let rest = rest.strip_prefix(b" ").unwrap_or(rest);
    !rest.starts_with(b"null") || key.find(rest).is_some()
}

impl StreamDecoder for OpenAiStream {
    fn event(&mut self, ev: SseEvent, out: &mut Vec<Chunk>) -> Result<(), UpstreamError> {
        let data = ev.data;
        if data.as_ref() == b"[DONE]" {
            self.done = true;
            out.push(Chunk::Done);
            return Ok(());
        }
        if self.done {
            return Ok(());
        }
        let mentions_error = ev.event == "error" || data.starts_with(b"{\"error\"");
        let mentions_usage = has_non_null(&data, &USAGE);
        let mentions_finish = has_non_null(&data, &FINISH_REASON);
        if mentions_error || mentions_usage || mentions_finish {
            let env: Envelope = serde_json::from_slice(&data).map_err(|e| {
                UpstreamError::retryable(
                    "malformed",
                    format!("malformed JSON in the event stream: {e}"),
                )
            })?;
            if let Some(err) = env.error {
                return Err(UpstreamError::retryable(
                    "stream_error",
                    redact(&err.message(), self.key.as_deref()),
                ));
            }
            if let Some(u) = env.usage() {
                self.usage = Some(u);
            }
            let choices_empty = env.choices.as_ref().is_none_or(Vec::is_empty);
            if env
                .choices
                .iter()
                .flatten()
                .any(|c| c.finish_reason.is_some())
            {
                self.finished = true;
            }
            if mentions_usage && choices_empty && !self.client_wants_usage {
                return Ok(()); // the usage chunk we asked for on the client's behalf
            }
        } else if data.first() != Some(&b'{') {
            return Err(UpstreamError::retryable(
                "malformed",
                format!(
                    "unexpected data in the event stream: {}",
                    excerpt(&data, 80, self.key.as_deref())
                ),
            ));
        } else if self.content_chunks == 0
            && serde_json::from_slice::<serde::de::IgnoredAny>(&data).is_err()
        {
            // The first chunk commits the stream: a broken one must fail over, not reach the client.
            return Err(UpstreamError::retryable(
                "malformed",
                "malformed JSON in the first event of the stream",
            ));
        }
        self.content_chunks += 1;
        out.push(Chunk::Data(data));
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<Chunk>) -> Result<(), UpstreamError> {
        if self.done {
            return Ok(());
        }
        if self.finished {
            // Some servers omit `[DONE]` after a proper finish_reason; the answer is complete.
            self.done = true;
            out.push(Chunk::Done);
            return Ok(());
        }
        Err(UpstreamError::retryable(
            "stream_cut",
            "the upstream closed the stream before it finished",
        ))
    }

    fn usage(&self) -> Option<Usage> {
        self.usage
    }

    fn output_estimate(&self) -> u64 {
        // OpenAI-family servers send about one token per chunk; the first carries the role.
        self.content_chunks.saturating_sub(1)
    }
}

pub mod responses;
#[cfg(test)]
mod tests;
