//! Anthropic's Messages API (`POST /v1/messages`) on top of the OpenAI chat router.

use serde_json::{Map, Value};

use super::{Context, Translated};
use crate::error::ApiError;

/// Translates an Anthropic Messages request into an OpenAI chat body.
pub fn to_chat(_body: Map<String, Value>, _ctx: &Context<'_>) -> Result<Translated, ApiError> {
    Err(ApiError::not_found(
        "llmesh: /v1/messages is not available in this build",
    ))
}
