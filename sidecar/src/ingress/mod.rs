//! Client wire formats. Every request is translated into one internal request (an OpenAI chat
//! completions body) so one router serves them all, and the answer is translated back: the
//! OpenAI endpoints pass through, Anthropic's Messages API and OpenAI's Responses API translate.

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::error::{ApiError, ErrorFormat};
use crate::providers::{Op, Usage};
use crate::relay::StreamEncoder;

pub mod messages;
pub mod responses;

/// The endpoint a client called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`.
    Chat,
    /// `POST /v1/completions`.
    Completion,
    /// `POST /v1/embeddings`.
    Embedding,
    /// `POST /v1/messages` (Anthropic).
    Messages,
    /// `POST /v1/responses` (OpenAI Responses API).
    Responses,
}

impl Endpoint {
    /// The internal operation.
    pub fn op(self) -> Op {
        match self {
            Self::Chat | Self::Messages | Self::Responses => Op::Chat,
            Self::Completion => Op::Completion,
            Self::Embedding => Op::Embedding,
        }
    }

    /// The shape of error bodies for this endpoint.
    pub fn error_format(self) -> ErrorFormat {
        match self {
            Self::Messages => ErrorFormat::Anthropic,
            _ => ErrorFormat::OpenAi,
        }
    }
}

/// An OpenAI chat body and, for translated formats, the translation back.
pub type Translated = (Map<String, Value>, Option<Box<dyn Translation>>);

/// What a translation keeps between a request and its answer.
pub trait Translation: Send {
    /// Translates a complete OpenAI chat completion into the client's format.
    fn response(&mut self, openai: &[u8], usage: Option<&Usage>) -> Result<Bytes, ApiError>;
    /// The encoder that writes a streamed answer in the client's format. It receives every
    /// OpenAI chunk, including the final usage chunk.
    fn encoder(self: Box<Self>) -> Box<dyn StreamEncoder>;
    /// Whether the client's own body may go to a backend that speaks its format natively
    /// (false when the translation resolved state only this sidecar has).
    fn passthrough(&self) -> bool {
        true
    }
    /// The handler's estimate of the translated prompt, in tokens, for a translation that
    /// reports usage when the backend does not. The handler always makes it for translated
    /// requests, so a translation need not read the prompt again.
    fn prompt_estimate(&mut self, _tokens: u32) {}
}

/// Per-request context a translation may need.
pub struct Context<'a> {
    /// Stored responses, for `previous_response_id`.
    pub responses: &'a responses::Store,
    /// The request id, used for ids in translated answers.
    pub request_id: &'a str,
}

/// Translates a client body into an OpenAI chat body. `None`: the body already is one.
pub fn translate(
    endpoint: Endpoint,
    body: Map<String, Value>,
    ctx: &Context<'_>,
) -> Result<Translated, ApiError> {
    match endpoint {
        Endpoint::Chat | Endpoint::Completion | Endpoint::Embedding => Ok((body, None)),
        Endpoint::Messages => messages::to_chat(body, ctx),
        Endpoint::Responses => responses::to_chat(body, ctx),
    }
}
