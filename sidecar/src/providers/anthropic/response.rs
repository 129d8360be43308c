//! Anthropic Messages answers -> OpenAI `chat.completion` bodies and `chat.completion.chunk`s.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{JSON_TOOL, stream_error};
use crate::providers::shape::{
    self, Choice, ChunkOut, Completion, DeltaChoice, ToolCall, UsageOut,
};
use crate::providers::{Chunk, Decoded, StreamDecoder, UpstreamError, Usage};
use crate::sse::SseEvent;

/// Anthropic's `usage` object (every field may be absent or null).
#[derive(Deserialize, Default, Clone, Copy, Debug)]
pub struct MessagesUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

impl MessagesUsage {
    /// Later usage (a stream's `message_delta`, cumulative) overrides what it reports.
    pub(crate) fn merge(&mut self, later: &MessagesUsage) {
        let pick = |a: &mut Option<u64>, b: Option<u64>| {
            if b.is_some() {
                *a = b;
            }
        };
        pick(&mut self.input_tokens, later.input_tokens);
        pick(&mut self.output_tokens, later.output_tokens);
        pick(
            &mut self.cache_creation_input_tokens,
            later.cache_creation_input_tokens,
        );
        pick(
            &mut self.cache_read_input_tokens,
            later.cache_read_input_tokens,
        );
    }

    /// `input_tokens` counts only the uncached rest: the prompt is all three together.
    pub fn normalise(&self) -> Usage {
        let read = self.cache_read_input_tokens.unwrap_or(0);
        let write = self.cache_creation_input_tokens.unwrap_or(0);
        Usage {
            prompt: self
                .input_tokens
                .unwrap_or(0)
                .saturating_add(read)
                .saturating_add(write),
            cached_input: read,
            cache_write: write,
            output: self.output_tokens.unwrap_or(0),
            estimated: false,
        }
    }
}

/// OpenAI's `finish_reason` for Anthropic's `stop_reason`. A `tool_use` stop that only called
/// the JSON-output tool is a plain answer.
fn finish_reason(stop: &str, tool_calls: bool) -> &'static str {
    match stop {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" if tool_calls => "tool_calls",
        "refusal" => "content_filter",
        // end_turn, stop_sequence, pause_turn (a server tool paused; the answer so far is whole)
        _ => "stop",
    }
}

#[derive(Deserialize)]
struct Message {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    content: Vec<Block>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    stop_sequence: Option<String>,
    #[serde(default)]
    usage: Option<MessagesUsage>,
}

/// Content blocks; thinking, redacted thinking and server-tool blocks have no place in an
/// OpenAI message and are skipped.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        #[serde(default)]
        text: String,
    },
    ToolUse {
        #[serde(default)]
        id: String,
        #[serde(default)]
        name: String,
        #[serde(default)]
        input: Value,
    },
    #[serde(other)]
    Other,
}

fn malformed(what: impl std::fmt::Display) -> UpstreamError {
    UpstreamError::retryable(
        "malformed",
        format!("Anthropic answered with malformed JSON: {what}"),
    )
}

/// Decodes a non-streaming Messages answer.
pub fn decode(body: &[u8], created: u64, key: Option<&str>) -> Result<Decoded, UpstreamError> {
    let msg: Message = serde_json::from_slice(body).map_err(malformed)?;
    // An error body under a 2xx (a proxy in between may do that) is still an error.
    if msg.kind == "error" {
        return Err(stream_error(body, key));
    }
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in msg.content {
        match block {
            Block::Text { text: t } => text.push_str(&t),
            Block::ToolUse { name, input, .. } if name == JSON_TOOL => {
                text.push_str(&input.to_string());
            }
            Block::ToolUse { id, name, input } => {
                calls.push(ToolCall::new(None, &id, &name, &input.to_string()).value());
            }
            Block::Other => {}
        }
    }
    let finish = finish_reason(msg.stop_reason.as_deref().unwrap_or(""), !calls.is_empty());
    let usage = msg.usage.map(|u| u.normalise());
    let out = Completion::new(
        &msg.id,
        created,
        &msg.model,
        vec![Choice {
            index: 0,
            message: shape::message(text, calls),
            logprobs: (),
            finish_reason: finish,
            // Which stop sequence matched goes where vLLM puts it, so /v1/messages can report it.
            stop_reason: msg.stop_sequence.filter(|_| finish == "stop"),
        }],
        usage.as_ref().map(UsageOut::of),
    );
    let bytes = serde_json::to_vec(&out).map_err(malformed)?;
    Ok(Decoded {
        body: Bytes::from(bytes),
        usage,
    })
}

/// What a content block of the stream becomes.
#[derive(Clone, Copy)]
enum BlockKind {
    /// Text: content deltas.
    Text,
    /// A client tool call: tool_call deltas at this OpenAI tool-call index.
    Tool(u32),
    /// The JSON-output tool: its input streams as content.
    Json,
    /// Thinking and server-tool blocks.
    Skip,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event {
    MessageStart {
        message: StartMessage,
    },
    ContentBlockStart {
        index: usize,
        content_block: StartBlock,
    },
    ContentBlockDelta {
        index: usize,
        delta: BlockDelta,
    },
    MessageDelta {
        #[serde(default)]
        delta: MessageDeltaBody,
        #[serde(default)]
        usage: Option<MessagesUsage>,
    },
    MessageStop,
    Error,
    /// `ping`, `content_block_stop`, and event types added later.
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct StartMessage {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    usage: Option<MessagesUsage>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StartBlock {
    Text {
        #[serde(default)]
        text: String,
    },
    ToolUse {
        #[serde(default)]
        id: String,
        #[serde(default)]
        name: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockDelta {
    TextDelta {
        #[serde(default)]
        text: String,
    },
    InputJsonDelta {
        #[serde(default)]
        partial_json: String,
    },
    /// thinking_delta, signature_delta, citations_delta.
    #[serde(other)]
    Other,
}

#[derive(Deserialize, Default)]
struct MessageDeltaBody {
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    stop_sequence: Option<String>,
}

/// Decodes Anthropic's named-event stream: `message_start`, `content_block_start/delta/stop`,
/// `message_delta`, `message_stop`, `ping`, `error`.
pub struct MessageStream {
    id: String,
    model: String,
    created: u64,
    client_wants_usage: bool,
    key: Option<String>,
    /// The role goes out with the first content, not at `message_start`: until content arrives
    /// nothing has reached the client and an `error` event can still fail over.
    started: bool,
    blocks: Vec<BlockKind>,
    tool_calls: u32,
    usage: Option<MessagesUsage>,
    /// `message_delta` carried the final usage.
    usage_final: bool,
    done: bool,
    output_bytes: u64,
    /// The stop sequence that ended the answer, for the finish chunk's `stop_reason`.
    matched: Option<String>,
}

impl MessageStream {
    /// A decoder; `model` is used until `message_start` names the model that answers.
    pub fn new(model: &str, client_wants_usage: bool, created: u64, key: Option<String>) -> Self {
        Self {
            id: String::new(),
            model: model.to_string(),
            created,
            client_wants_usage,
            key,
            started: false,
            blocks: Vec::new(),
            tool_calls: 0,
            usage: None,
            usage_final: false,
            done: false,
            output_bytes: 0,
            matched: None,
        }
    }

    fn chunk(&self, choices: &[DeltaChoice<'_>], usage: Option<UsageOut>) -> Chunk {
        ChunkOut::new(&self.id, self.created, &self.model, choices, usage).chunk()
    }

    fn delta(&mut self, mut delta: Map<String, Value>, finish: Option<&str>, out: &mut Vec<Chunk>) {
        if !self.started {
            self.started = true;
            delta = shape::first_delta(delta);
        }
        let choice = [DeltaChoice {
            index: 0,
            delta,
            logprobs: (),
            finish_reason: finish,
            stop_reason: self.matched.as_deref().filter(|_| finish == Some("stop")),
        }];
        out.push(self.chunk(&choice, None));
    }

    fn content(&mut self, text: &str, out: &mut Vec<Chunk>) {
        if text.is_empty() {
            return;
        }
        self.output_bytes += text.len() as u64;
        let mut d = Map::new();
        d.insert("content".into(), text.into());
        self.delta(d, None, out);
    }

    fn set_block(&mut self, index: usize, kind: BlockKind) {
        if self.blocks.len() <= index {
            self.blocks.resize(index + 1, BlockKind::Skip);
        }
        self.blocks[index] = kind;
    }
}

impl StreamDecoder for MessageStream {
    fn event(&mut self, ev: SseEvent, out: &mut Vec<Chunk>) -> Result<(), UpstreamError> {
        if self.done {
            return Ok(());
        }
        let event: Event = serde_json::from_slice(&ev.data).map_err(|e| {
            UpstreamError::retryable(
                "malformed",
                format!("malformed event in Anthropic's stream: {e}"),
            )
        })?;
        match event {
            Event::MessageStart { message } => {
                self.id = message.id;
                if !message.model.is_empty() {
                    self.model = message.model;
                }
                self.usage = message.usage;
            }
            Event::ContentBlockStart {
                index,
                content_block,
            } => match content_block {
                StartBlock::Text { text } => {
                    self.set_block(index, BlockKind::Text);
                    self.content(&text, out);
                }
                StartBlock::ToolUse { name, .. } if name == JSON_TOOL => {
                    self.set_block(index, BlockKind::Json);
                }
                StartBlock::ToolUse { id, name } => {
                    let n = self.tool_calls;
                    self.tool_calls += 1;
                    self.set_block(index, BlockKind::Tool(n));
                    self.output_bytes += name.len() as u64;
                    let mut d = Map::new();
                    d.insert(
                        "tool_calls".into(),
                        Value::Array(vec![ToolCall::new(Some(n), &id, &name, "").value()]),
                    );
                    self.delta(d, None, out);
                }
                StartBlock::Other => self.set_block(index, BlockKind::Skip),
            },
            Event::ContentBlockDelta { index, delta } => {
                let kind = self.blocks.get(index).copied().unwrap_or(BlockKind::Skip);
                match (kind, delta) {
                    (BlockKind::Text, BlockDelta::TextDelta { text })
                    | (BlockKind::Json, BlockDelta::InputJsonDelta { partial_json: text }) => {
                        self.content(&text, out);
                    }
                    (BlockKind::Tool(n), BlockDelta::InputJsonDelta { partial_json })
                        if !partial_json.is_empty() =>
                    {
                        self.output_bytes += partial_json.len() as u64;
                        let mut d = Map::new();
                        d.insert(
                            "tool_calls".into(),
                            Value::Array(vec![ToolCall::arguments(n, &partial_json).value()]),
                        );
                        self.delta(d, None, out);
                    }
                    _ => {}
                }
            }
            Event::MessageDelta { delta, usage } => {
                if let Some(u) = usage {
                    self.usage
                        .get_or_insert_with(MessagesUsage::default)
                        .merge(&u);
                    self.usage_final = true;
                }
                if let Some(stop) = delta.stop_reason {
                    self.matched = delta.stop_sequence;
                    let finish = finish_reason(&stop, self.tool_calls > 0);
                    self.delta(Map::new(), Some(finish), out);
                }
            }
            Event::MessageStop => {
                if self.client_wants_usage
                    && let Some(u) = self.usage()
                {
                    out.push(self.chunk(&[], Some(UsageOut::of(&u))));
                }
                self.done = true;
                out.push(Chunk::Done);
            }
            Event::Error => return Err(stream_error(&ev.data, self.key.as_deref())),
            Event::Other => {}
        }
        Ok(())
    }

    fn finish(&mut self, _out: &mut Vec<Chunk>) -> Result<(), UpstreamError> {
        if self.done {
            return Ok(());
        }
        Err(UpstreamError::retryable(
            "stream_cut",
            "Anthropic's stream ended before message_stop",
        ))
    }

    fn usage(&self) -> Option<Usage> {
        let mut u = self.usage?.normalise();
        if !self.usage_final {
            // `message_start` reports the output so far (about one token); a stream cut
            // before `message_delta` is charged for what it actually sent.
            let estimate = self.output_estimate();
            if estimate > u.output {
                u.output = estimate;
                u.estimated = true;
            }
        }
        Some(u)
    }

    fn output_estimate(&self) -> u64 {
        // About four bytes of English text or JSON per token.
        self.output_bytes.div_ceil(4)
    }
}
