//! The Messages ingress: a client's body translated into the internal chat body
//! (`ingress::translate`), and a chat answer translated back. Properties: a translated request
//! is a chat body (a model, a list of messages) the prompt estimator reads; a refusal is a 400
//! that names the field at fault (`param`) when the body is a JSON object; the answer's
//! translation is JSON and its stream encoder writes events for every chunk.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llmesh_fuzz::{check_refusal, check_translation};
use llmesh_sidecar::ingress::messages;
use llmesh_sidecar::internal::Endpoint;
use serde_json::{Map, Value};

fuzz_target!(|data: &[u8]| {
    // `/v1/messages/count_tokens` reads the same body.
    match messages::count_tokens(data) {
        Ok((model, out)) => {
            assert!(!model.is_empty());
            let v: Value = serde_json::from_slice(&out).unwrap();
            assert!(v["input_tokens"].is_u64(), "{v}");
        }
        Err(e) => check_refusal(&e, data),
    }
    let Ok(body) = serde_json::from_slice::<Map<String, Value>>(data) else {
        return;
    };
    let model = body.get("model").cloned();
    if check_translation(Endpoint::Messages, body, data) {
        // Messages requires a model: a translated request always names one.
        assert!(
            model
                .as_ref()
                .and_then(Value::as_str)
                .is_some_and(|m| !m.is_empty())
        );
    }
});
