//! The Responses ingress: a client's body translated into the internal chat body
//! (`ingress::translate`), and a chat answer translated back. Properties: a translated request
//! is a chat body (a model, a list of messages) the prompt estimator reads; a refusal is a 400
//! that names the field at fault (`param`) when the body is a JSON object; the answer's
//! translation is JSON and its stream encoder writes events for every chunk.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llmesh_fuzz::check_translation;
use llmesh_sidecar::ingress::responses;
use llmesh_sidecar::internal::Endpoint;
use llmesh_sidecar::tokens;
use serde_json::{Map, Value};

fuzz_target!(|data: &[u8]| {
    // A request only a native backend serves gets a stand-in chat body for its estimates.
    if let Ok(body) = serde_json::from_slice::<Map<String, Value>>(data) {
        let chat = responses::stand_in(&body);
        assert!(chat["messages"].is_array());
        let _ = tokens::chat_prompt(&chat, true);
    }
    let Ok(body) = serde_json::from_slice::<Map<String, Value>>(data) else {
        return;
    };
    check_translation(Endpoint::Responses, body, data);
});
