//! The internal format and the types every stage shares, at the bottom of the sidecar's
//! dependencies: what a client called ([`Endpoint`]) and asked ([`Op`]), the usage a request is
//! charged ([`Usage`], read from OpenAI's shape by [`OaUsage`]), and the stream chunk
//! ([`Chunk`]) that providers decode into and [`StreamEncoder`]s write out in a client's format.
//! The internal request itself is an OpenAI chat-completions body (a JSON object); the client
//! formats are translated into it in [`crate::ingress`], the providers' out of it in
//! [`crate::providers`]. This module imports nothing else of the sidecar but [`crate::error`].

use std::collections::VecDeque;

use bytes::Bytes;
use serde::Deserialize;

use llmesh_api::money::{MicroUsd, cost_of};
use llmesh_api::prices::Prices;

use crate::error::ErrorFormat;

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

    /// Whether the client's body is already the internal format (an OpenAI body), rather than
    /// a format translated into it.
    pub fn is_internal(self) -> bool {
        matches!(self, Self::Chat | Self::Completion | Self::Embedding)
    }
}

/// What the client asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `/v1/chat/completions` (and every format translated into it).
    Chat,
    /// `/v1/completions`.
    Completion,
    /// `/v1/embeddings`.
    Embedding,
}

impl Op {
    /// Name for logs and metrics (`gen_ai.operation.name`).
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Chat => "chat",
            Op::Completion => "text_completion",
            Op::Embedding => "embeddings",
        }
    }
}

/// Token usage of one request, normalised across providers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// All prompt tokens, cached and cache-write ones included.
    pub prompt: u64,
    /// Prompt tokens read from the provider's cache (part of `prompt`).
    pub cached_input: u64,
    /// Prompt tokens written to the provider's cache (part of `prompt`).
    pub cache_write: u64,
    /// Completion tokens, reasoning included.
    pub output: u64,
    /// True when counted by our estimator rather than reported by the provider.
    pub estimated: bool,
}

impl Usage {
    /// Uncached, unwritten prompt tokens.
    pub fn uncached_input(&self) -> u64 {
        self.prompt
            .saturating_sub(self.cached_input.saturating_add(self.cache_write))
    }

    /// Prompt plus completion.
    pub fn total(&self) -> u64 {
        self.prompt.saturating_add(self.output)
    }

    /// Cost in micro-dollars at `prices`, each token class at its own price.
    pub fn cost(&self, prices: &Prices) -> MicroUsd {
        cost_of(self.uncached_input(), prices.input)
            .saturating_add(cost_of(self.cached_input, prices.cached_input))
            .saturating_add(cost_of(self.cache_write, prices.cache_write))
            .saturating_add(cost_of(self.output, prices.output))
    }
}

/// Usage as OpenAI-compatible servers report it (the internal format's `usage` object).
#[derive(Deserialize, Default, Debug)]
pub struct OaUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
    // DeepSeek reports cache hits here instead.
    #[serde(default)]
    prompt_cache_hit_tokens: Option<u64>,
}

#[derive(Deserialize, Default, Debug)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

impl OaUsage {
    /// Normalised usage.
    pub fn normalise(&self) -> Usage {
        Usage {
            prompt: self.prompt_tokens.unwrap_or(0),
            cached_input: self
                .prompt_tokens_details
                .as_ref()
                .and_then(|d| d.cached_tokens)
                .or(self.prompt_cache_hit_tokens)
                .unwrap_or(0),
            cache_write: 0,
            output: self.completion_tokens.unwrap_or(0),
            estimated: false,
        }
    }
}

/// One piece of a stream, in OpenAI chat-completion-chunk shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chunk {
    /// The JSON of one `chat.completion.chunk` (or text completion chunk).
    Data(Bytes),
    /// The end of the stream (`data: [DONE]`).
    Done,
}

/// Writes OpenAI-shaped chunks in the client's wire format (the encoders are in
/// [`crate::ingress`]).
pub trait StreamEncoder: Send {
    /// One chunk.
    fn chunk(&mut self, chunk: Chunk, out: &mut VecDeque<Bytes>);
    /// The stream failed after it started: tell the client in-band.
    fn error(&mut self, message: &str, out: &mut VecDeque<Bytes>);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_price_each_token_class() {
        let p = Prices {
            input: 3_000_000,
            output: 15_000_000,
            cached_input: 300_000,
            cache_write: 3_750_000,
        };
        let u = Usage {
            prompt: 10_000,
            cached_input: 6_000,
            cache_write: 2_000,
            output: 1_000,
            estimated: false,
        };
        // 2,000 uncached * $3 + 6,000 cached * $0.30 + 2,000 written * $3.75 + 1,000 out * $15, per 1M.
        assert_eq!(u.cost(&p), 6_000 + 1_800 + 7_500 + 15_000);
    }
}
