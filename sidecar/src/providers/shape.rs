//! OpenAI-shaped answers and stream chunks, typed, for the providers that translate (Anthropic,
//! Gemini): both write the same fields in the same order, and a field cannot be misspelt.

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};

use super::{Chunk, Usage};

/// OpenAI's `usage` object.
#[derive(Serialize, Debug)]
pub(crate) struct UsageOut {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: PromptDetails,
    #[serde(skip_serializing_if = "Option::is_none")]
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Serialize, Debug)]
struct PromptDetails {
    cached_tokens: u64,
}

#[derive(Serialize, Debug)]
struct CompletionDetails {
    reasoning_tokens: u64,
}

impl UsageOut {
    /// `usage` for normalised usage.
    pub(crate) fn of(u: &Usage) -> Self {
        Self {
            prompt_tokens: u.prompt,
            completion_tokens: u.output,
            total_tokens: u.total(),
            prompt_tokens_details: PromptDetails {
                cached_tokens: u.cached_input,
            },
            completion_tokens_details: None,
        }
    }

    /// With `completion_tokens_details.reasoning_tokens`, when there were any.
    pub(crate) fn reasoning(mut self, tokens: Option<u64>) -> Self {
        self.completion_tokens_details = tokens
            .filter(|t| *t > 0)
            .map(|reasoning_tokens| CompletionDetails { reasoning_tokens });
        self
    }
}

/// A tool call in a message or a stream delta. `index` is set in deltas; a delta after the
/// first carries only `index` and `function.arguments`.
#[derive(Serialize, Debug)]
pub(crate) struct ToolCall<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub function: Function<'a>,
}

/// A tool call's function.
#[derive(Serialize, Debug)]
pub(crate) struct Function<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    pub arguments: &'a str,
}

impl<'a> ToolCall<'a> {
    /// A whole call (or the first delta of one, with `index`).
    pub(crate) fn new(index: Option<u32>, id: &'a str, name: &'a str, arguments: &'a str) -> Self {
        Self {
            index,
            id: Some(id),
            kind: Some("function"),
            function: Function {
                name: Some(name),
                arguments,
            },
        }
    }

    /// A later delta: more of call `index`'s arguments.
    pub(crate) fn arguments(index: u32, arguments: &'a str) -> Self {
        Self {
            index: Some(index),
            id: None,
            kind: None,
            function: Function {
                name: None,
                arguments,
            },
        }
    }

    /// As a JSON value, for a message's or a delta's `tool_calls`.
    pub(crate) fn value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// An assistant `message`: `content` is the text, or `null` when there is none beside tool calls.
pub(crate) fn message(text: String, calls: Vec<Value>) -> Map<String, Value> {
    let mut message = Map::new();
    message.insert("role".into(), "assistant".into());
    message.insert(
        "content".into(),
        if text.is_empty() && !calls.is_empty() {
            Value::Null
        } else {
            Value::String(text)
        },
    );
    if !calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(calls));
    }
    message
}

/// The first delta of a choice: `delta` after the role (and a `null` content when `delta` has
/// none).
pub(crate) fn first_delta(mut delta: Map<String, Value>) -> Map<String, Value> {
    let mut first = Map::with_capacity(delta.len() + 2);
    first.insert("role".into(), "assistant".into());
    if !delta.contains_key("content") {
        first.insert("content".into(), Value::Null);
    }
    first.append(&mut delta);
    first
}

/// One choice of a `chat.completion`.
#[derive(Serialize, Debug)]
pub(crate) struct Choice {
    pub index: usize,
    pub message: Map<String, Value>,
    /// Always `null`: no translating provider reports OpenAI's logprobs.
    pub logprobs: (),
    pub finish_reason: &'static str,
    /// The stop sequence that matched, where vLLM puts it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
}

/// A `chat.completion` body.
#[derive(Serialize, Debug)]
pub(crate) struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<Choice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<UsageOut>,
}

impl<'a> Completion<'a> {
    /// A completion of `choices`.
    pub(crate) fn new(
        id: &'a str,
        created: u64,
        model: &'a str,
        choices: Vec<Choice>,
        usage: Option<UsageOut>,
    ) -> Self {
        Self {
            id,
            object: "chat.completion",
            created,
            model,
            choices,
            usage,
        }
    }
}

/// One choice of a `chat.completion.chunk`.
#[derive(Serialize, Debug)]
pub(crate) struct DeltaChoice<'a> {
    pub index: usize,
    pub delta: Map<String, Value>,
    /// Always `null`, as in [`Choice`].
    pub logprobs: (),
    pub finish_reason: Option<&'a str>,
    /// As in [`Choice`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<&'a str>,
}

/// A `chat.completion.chunk`: the id, creation time and model every chunk of a stream repeats.
#[derive(Serialize, Debug)]
pub(crate) struct ChunkOut<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [DeltaChoice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<UsageOut>,
}

impl<'a> ChunkOut<'a> {
    /// A chunk of `choices`; the usage chunk has none.
    pub(crate) fn new(
        id: &'a str,
        created: u64,
        model: &'a str,
        choices: &'a [DeltaChoice<'a>],
        usage: Option<UsageOut>,
    ) -> Self {
        Self {
            id,
            object: "chat.completion.chunk",
            created,
            model,
            choices,
            usage,
        }
    }

    /// The chunk as a stream frame.
    pub(crate) fn chunk(&self) -> Chunk {
        Chunk::Data(Bytes::from(serde_json::to_vec(self).unwrap_or_default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_serialise_in_openai_field_order() {
        let u = Usage {
            prompt: 10,
            cached_input: 4,
            cache_write: 0,
            output: 3,
            estimated: false,
        };
        let mut message = Map::new();
        message.insert("role".into(), "assistant".into());
        message.insert("content".into(), "hi".into());
        let body = Completion::new(
            "id-1",
            7,
            "m",
            vec![Choice {
                index: 0,
                message,
                logprobs: (),
                finish_reason: "stop",
                stop_reason: Some("END".into()),
            }],
            Some(UsageOut::of(&u).reasoning(Some(2))),
        );
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"id":"id-1","object":"chat.completion","created":7,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"logprobs":null,"finish_reason":"stop","stop_reason":"END"}],"usage":{"prompt_tokens":10,"completion_tokens":3,"total_tokens":13,"prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":2}}}"#
        );
        let choices = [DeltaChoice {
            index: 1,
            delta: Map::new(),
            logprobs: (),
            finish_reason: None,
            stop_reason: None,
        }];
        let Chunk::Data(c) = ChunkOut::new("id-1", 7, "m", &choices, None).chunk() else {
            panic!("a data chunk");
        };
        assert_eq!(
            c,
            r#"{"id":"id-1","object":"chat.completion.chunk","created":7,"model":"m","choices":[{"index":1,"delta":{},"logprobs":null,"finish_reason":null}]}"#
        );
        assert_eq!(
            ToolCall::arguments(2, "{\"a\"").value().to_string(),
            r#"{"index":2,"function":{"arguments":"{\"a\""}}"#
        );
        assert_eq!(
            ToolCall::new(None, "call_1", "f", "{}").value().to_string(),
            r#"{"id":"call_1","type":"function","function":{"name":"f","arguments":"{}"}}"#
        );
    }
}
