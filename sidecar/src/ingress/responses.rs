//! OpenAI's Responses API (`POST /v1/responses`) on top of the chat router.

use serde_json::{Map, Value};

use super::{Context, Translated};
use crate::error::ApiError;

/// Responses this sidecar produced, for `previous_response_id`.
#[derive(Default)]
pub struct Store {}

/// Translates a Responses API request into an OpenAI chat body.
pub fn to_chat(_body: Map<String, Value>, _ctx: &Context<'_>) -> Result<Translated, ApiError> {
    Err(ApiError::not_found(
        "llmesh: /v1/responses is not available in this build",
    ))
}
