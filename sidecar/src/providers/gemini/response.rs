//! Gemini `GenerateContentResponse`s -> OpenAI `chat.completion` bodies and
//! `chat.completion.chunk`s.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::StatusCode;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{GoogleError, classify_error};
use crate::providers::shape::{
    self, Choice, ChunkOut, Completion, DeltaChoice, ToolCall, UsageOut,
};
use crate::providers::{Chunk, Decoded, ErrorClass, StreamDecoder, UpstreamError, Usage};
use crate::sse::SseEvent;

/// Separates a generated tool-call id from the thought signature Gemini attached to the call.
/// OpenAI clients echo tool-call ids verbatim, so the signature comes back with the history,
/// which Gemini 3 requires for function calling.
const SIGNATURE_MARK: &str = "_ts_";

/// A new tool-call id, carrying `signature` (base64url, so the id stays `[A-Za-z0-9_-]`, the
/// alphabet Anthropic also accepts should the conversation move there).
pub fn call_id(rng: &mut fastrand::Rng, signature: Option<&str>) -> String {
    let mut id = String::with_capacity(29);
    id.push_str("call_");
    id.extend((0..24).map(|_| rng.alphanumeric()));
    if let Some(bytes) = signature.and_then(|s| STANDARD.decode(s).ok()) {
        id.push_str(SIGNATURE_MARK);
        id.push_str(&URL_SAFE_NO_PAD.encode(bytes));
    }
    id
}

/// A completion id for answers without Gemini's `responseId`.
fn completion_id(rng: &mut fastrand::Rng) -> String {
    let mut id = String::with_capacity(33);
    id.push_str("chatcmpl-");
    id.extend((0..24).map(|_| rng.alphanumeric()));
    id
}

/// The thought signature carried in a tool-call id made by [`call_id`], in Gemini's encoding.
pub fn signature_of(id: &str) -> Option<String> {
    let rest = id.strip_prefix("call_")?;
    let (head, sig) = rest.split_once(SIGNATURE_MARK)?;
    if !head.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(sig).ok()?;
    Some(STANDARD.encode(bytes))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Response {
    #[serde(default)]
    candidates: Vec<Candidate>,
    #[serde(default)]
    prompt_feedback: Option<PromptFeedback>,
    #[serde(default)]
    usage_metadata: Option<UsageMetadata>,
    #[serde(default)]
    model_version: Option<String>,
    #[serde(default)]
    response_id: Option<String>,
    #[serde(default)]
    error: Option<GoogleError>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    #[serde(default)]
    content: Option<Content>,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    index: Option<usize>,
}

#[derive(Deserialize, Default)]
struct Content {
    #[serde(default)]
    parts: Vec<Part>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Part {
    #[serde(default)]
    text: Option<String>,
    /// Thought summaries are not part of the answer.
    #[serde(default)]
    thought: bool,
    #[serde(default)]
    function_call: Option<FunctionCall>,
    #[serde(default)]
    thought_signature: Option<String>,
}

#[derive(Deserialize, Default)]
struct FunctionCall {
    #[serde(default)]
    name: String,
    #[serde(default)]
    args: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    #[serde(default)]
    block_reason: Option<String>,
    #[serde(default)]
    block_reason_message: Option<String>,
}

/// Gemini's `usageMetadata`.
#[derive(Deserialize, Default, Clone, Copy, Debug)]
#[serde(rename_all = "camelCase")]
pub struct UsageMetadata {
    #[serde(default)]
    prompt_token_count: Option<u64>,
    #[serde(default)]
    candidates_token_count: Option<u64>,
    #[serde(default)]
    cached_content_token_count: Option<u64>,
    #[serde(default)]
    thoughts_token_count: Option<u64>,
}

impl UsageMetadata {
    /// `promptTokenCount` includes the cached tokens; thinking is billed as output.
    pub fn normalise(&self) -> Usage {
        Usage {
            prompt: self.prompt_token_count.unwrap_or(0),
            cached_input: self.cached_content_token_count.unwrap_or(0),
            cache_write: 0,
            output: self
                .candidates_token_count
                .unwrap_or(0)
                .saturating_add(self.thoughts_token_count.unwrap_or(0)),
            estimated: false,
        }
    }

    fn openai(&self) -> UsageOut {
        UsageOut::of(&self.normalise()).reasoning(self.thoughts_token_count)
    }
}

/// Finish reasons that mean a safety or policy filter stopped the answer.
fn is_filtered(reason: &str) -> bool {
    matches!(
        reason,
        "SAFETY"
            | "RECITATION"
            | "BLOCKLIST"
            | "PROHIBITED_CONTENT"
            | "SPII"
            | "IMAGE_SAFETY"
            | "IMAGE_PROHIBITED_CONTENT"
            | "IMAGE_RECITATION"
    )
}

/// OpenAI's `finish_reason`. Gemini says `STOP` after function calls too; OpenAI clients loop on
/// `tool_calls`.
fn finish_reason(reason: &str, calls: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        r if is_filtered(r) => "content_filter",
        _ if calls => "tool_calls",
        _ => "stop",
    }
}

fn blocked(what: &str, reason: &str, detail: Option<&str>) -> UpstreamError {
    UpstreamError {
        class: ErrorClass::ContentPolicy,
        status: None,
        message: match detail {
            Some(d) => format!("Gemini blocked the {what} ({reason}): {d}"),
            None => format!("Gemini blocked the {what} ({reason})"),
        },
        retry_after: None,
        reason: "content_policy",
        openai_body: None,
    }
}

fn in_body_error(err: &GoogleError, key: Option<&str>) -> UpstreamError {
    let status = err
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut e = classify_error(key, status, err);
    // Inside a 200 answer it is no status the attempt loop should report as the upstream's.
    e.status = None;
    e
}

/// Checks that fail an answer before anything of it is used: a blocked prompt, or candidates
/// that were all stopped by a filter (or by a malformed call) without producing content.
fn refusal(resp: &Response, key: Option<&str>) -> Option<UpstreamError> {
    if let Some(err) = &resp.error {
        return Some(in_body_error(err, key));
    }
    if let Some(fb) = &resp.prompt_feedback
        && let Some(reason) = &fb.block_reason
    {
        return Some(blocked(
            "prompt",
            reason,
            fb.block_reason_message.as_deref(),
        ));
    }
    let empty = |c: &Candidate| {
        c.content.as_ref().is_none_or(|c| {
            c.parts
                .iter()
                .all(|p| p.function_call.is_none() && p.text.as_deref().is_none_or(str::is_empty))
        })
    };
    let mut reasons = resp
        .candidates
        .iter()
        .map(|c| empty(c).then_some(c.finish_reason.as_deref()).flatten());
    let first = reasons.next().flatten()?;
    if !reasons.all(|r| r.is_some()) {
        return None;
    }
    if is_filtered(first) {
        return Some(blocked("answer", first, None));
    }
    if first == "MALFORMED_FUNCTION_CALL" {
        return Some(UpstreamError::retryable(
            "malformed_function_call",
            "Gemini produced a malformed function call and no content",
        ));
    }
    None
}

fn malformed(e: impl std::fmt::Display) -> UpstreamError {
    UpstreamError::retryable(
        "malformed",
        format!("Gemini answered with malformed JSON: {e}"),
    )
}

/// An OpenAI tool call; `index` is set in stream deltas.
fn tool_call(
    rng: &mut fastrand::Rng,
    part: &Part,
    call: &FunctionCall,
    index: Option<u32>,
) -> Value {
    let args = call
        .args
        .clone()
        .unwrap_or_else(|| Value::Object(Map::new()))
        .to_string();
    let id = call_id(rng, part.thought_signature.as_deref());
    ToolCall::new(index, &id, &call.name, &args).value()
}

/// Decodes a non-streaming answer. `model` names the answer when Gemini gives no
/// `modelVersion`; `rng` makes tool-call ids (and the completion id when there is no
/// `responseId`).
pub fn decode(
    body: &[u8],
    model: &str,
    created: u64,
    rng: &mut fastrand::Rng,
    key: Option<&str>,
) -> Result<Decoded, UpstreamError> {
    let resp: Response = serde_json::from_slice(body).map_err(malformed)?;
    if let Some(e) = refusal(&resp, key) {
        return Err(e);
    }
    if resp.candidates.is_empty() {
        return Err(UpstreamError::retryable(
            "malformed",
            "Gemini answered without candidates",
        ));
    }
    let mut choices = Vec::with_capacity(resp.candidates.len());
    for (n, c) in resp.candidates.iter().enumerate() {
        let mut text = String::new();
        let mut calls = Vec::new();
        for part in c.content.iter().flat_map(|c| &c.parts) {
            if let Some(call) = &part.function_call {
                calls.push(tool_call(rng, part, call, None));
            } else if let Some(t) = part.text.as_deref().filter(|_| !part.thought) {
                text.push_str(t);
            }
        }
        let finish = finish_reason(c.finish_reason.as_deref().unwrap_or(""), !calls.is_empty());
        choices.push(Choice {
            index: c.index.unwrap_or(n),
            message: shape::message(text, calls),
            logprobs: (),
            finish_reason: finish,
            stop_reason: None,
        });
    }
    let id = resp
        .response_id
        .clone()
        .unwrap_or_else(|| completion_id(rng));
    let out = Completion::new(
        &id,
        created,
        resp.model_version.as_deref().unwrap_or(model),
        choices,
        resp.usage_metadata.as_ref().map(UsageMetadata::openai),
    );
    let bytes = serde_json::to_vec(&out).map_err(malformed)?;
    Ok(Decoded {
        body: Bytes::from(bytes),
        usage: resp.usage_metadata.map(|u| u.normalise()),
    })
}

#[derive(Default, Clone)]
struct CandidateState {
    started: bool,
    calls: u32,
    content: bool,
    finished: bool,
}

/// Decodes `streamGenerateContent?alt=sse`: every `data:` is a whole `GenerateContentResponse`
/// holding the next piece of each candidate; the last one has `finishReason` and the usage.
pub struct GeminiStream {
    id: Option<String>,
    model: String,
    created: u64,
    client_wants_usage: bool,
    rng: fastrand::Rng,
    key: Option<String>,
    candidates: Vec<CandidateState>,
    usage: Option<UsageMetadata>,
    /// Any chunk produced: from then on a block cannot fail over and is reported in-band.
    emitted: bool,
    done: bool,
    output_bytes: u64,
}

impl GeminiStream {
    /// A decoder for one stream.
    pub fn new(
        model: &str,
        client_wants_usage: bool,
        created: u64,
        rng: fastrand::Rng,
        key: Option<String>,
    ) -> Self {
        Self {
            id: None,
            model: model.to_string(),
            created,
            client_wants_usage,
            rng,
            key,
            candidates: Vec::new(),
            usage: None,
            emitted: false,
            done: false,
            output_bytes: 0,
        }
    }

    fn chunk(&self, choices: &[DeltaChoice<'_>], usage: Option<UsageOut>) -> Chunk {
        let id = self.id.as_deref().unwrap_or("");
        ChunkOut::new(id, self.created, &self.model, choices, usage).chunk()
    }

    fn delta(
        &mut self,
        index: usize,
        mut delta: Map<String, Value>,
        finish: Option<&str>,
        out: &mut Vec<Chunk>,
    ) {
        let state = &mut self.candidates[index];
        if !state.started {
            state.started = true;
            delta = shape::first_delta(delta);
        }
        let choice = [DeltaChoice {
            index,
            delta,
            logprobs: (),
            finish_reason: finish,
            stop_reason: None,
        }];
        self.emitted = true;
        out.push(self.chunk(&choice, None));
    }

    fn candidate(&mut self, c: Candidate, out: &mut Vec<Chunk>) -> Result<(), UpstreamError> {
        let index = c.index.unwrap_or(0);
        if self.candidates.len() <= index {
            self.candidates.resize(index + 1, CandidateState::default());
        }
        for part in c.content.into_iter().flat_map(|c| c.parts) {
            let mut d = Map::new();
            if let Some(call) = &part.function_call {
                // Gemini sends each call whole: one delta with id, name and all arguments.
                let n = self.candidates[index].calls;
                self.candidates[index].calls += 1;
                let call = tool_call(&mut self.rng, &part, call, Some(n));
                self.output_bytes +=
                    call["function"]["arguments"].as_str().map_or(0, str::len) as u64;
                d.insert("tool_calls".into(), Value::Array(vec![call]));
            } else if let Some(text) = part.text.filter(|t| !t.is_empty() && !part.thought) {
                self.output_bytes += text.len() as u64;
                d.insert("content".into(), text.into());
            } else {
                continue;
            }
            self.candidates[index].content = true;
            self.delta(index, d, None, out);
        }
        if let Some(reason) = c.finish_reason {
            if !self.emitted && !self.candidates[index].content {
                if is_filtered(&reason) {
                    return Err(blocked("answer", &reason, None));
                }
                if reason == "MALFORMED_FUNCTION_CALL" {
                    return Err(UpstreamError::retryable(
                        "malformed_function_call",
                        "Gemini produced a malformed function call and no content",
                    ));
                }
            }
            let finish = finish_reason(&reason, self.candidates[index].calls > 0);
            self.candidates[index].finished = true;
            self.delta(index, Map::new(), Some(finish), out);
        }
        Ok(())
    }
}

impl StreamDecoder for GeminiStream {
    fn event(&mut self, ev: SseEvent, out: &mut Vec<Chunk>) -> Result<(), UpstreamError> {
        if self.done {
            return Ok(());
        }
        let resp: Response = serde_json::from_slice(&ev.data).map_err(|e| {
            UpstreamError::retryable(
                "malformed",
                format!("malformed event in Gemini's stream: {e}"),
            )
        })?;
        if let Some(err) = &resp.error {
            return Err(in_body_error(err, self.key.as_deref()));
        }
        if self.id.is_none() {
            self.id = Some(match &resp.response_id {
                Some(id) => id.clone(),
                None => completion_id(&mut self.rng),
            });
        }
        if let Some(m) = &resp.model_version {
            self.model.clone_from(m);
        }
        if let Some(u) = resp.usage_metadata {
            self.usage = Some(u);
        }
        if let Some(fb) = &resp.prompt_feedback
            && let Some(reason) = &fb.block_reason
        {
            let e = blocked("prompt", reason, fb.block_reason_message.as_deref());
            if !self.emitted {
                return Err(e);
            }
            return Err(UpstreamError::retryable("content_policy", e.message));
        }
        for c in resp.candidates {
            self.candidate(c, out)?;
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<Chunk>) -> Result<(), UpstreamError> {
        if self.done {
            return Ok(());
        }
        if self.candidates.is_empty() || !self.candidates.iter().all(|c| c.finished) {
            return Err(UpstreamError::retryable(
                "stream_cut",
                "Gemini's stream ended before a finishReason",
            ));
        }
        if self.client_wants_usage
            && let Some(u) = &self.usage
        {
            out.push(self.chunk(&[], Some(u.openai())));
        }
        self.done = true;
        out.push(Chunk::Done);
        Ok(())
    }

    fn usage(&self) -> Option<Usage> {
        let mut u = self.usage?.normalise();
        let finished = !self.candidates.is_empty() && self.candidates.iter().all(|c| c.finished);
        if !finished {
            // Usage so far lags the text sent; a cut stream is charged for what went out.
            let estimate = self.output_estimate();
            if estimate > u.output {
                u.output = estimate;
                u.estimated = true;
            }
        }
        Some(u)
    }

    fn output_estimate(&self) -> u64 {
        self.output_bytes.div_ceil(4)
    }
}
