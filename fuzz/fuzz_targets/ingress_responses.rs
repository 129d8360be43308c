//! The Responses ingress: a client's body translated into the internal chat body
//! (`ingress::translate`), and a chat answer translated back. Properties: a translated request
//! is a chat body (a model, a list of messages) the prompt estimator reads; a refusal is a 400
//! that names the field at fault (`param`) when the body is a JSON object; the answer's
//! translation is JSON and its stream encoder writes events for every chunk.
#![no_main]

use std::collections::VecDeque;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use llmesh_sidecar::error::ApiError;
use llmesh_sidecar::ingress::responses;
use llmesh_sidecar::ingress::{Context, translate};
use llmesh_sidecar::internal::Endpoint;
use llmesh_sidecar::providers::{Chunk, Usage};
use llmesh_sidecar::tokens;
use serde_json::{Map, Value};

const ANSWER: &str = r#"{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi","tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#;
const CHUNKS: &[&str] = &[
    r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"h"},"finish_reason":null}]}"#,
    r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":"{}"}}]},"finish_reason":"tool_calls"}]}"#,
    r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#,
];

fn check_refusal(e: &ApiError, data: &[u8]) {
    assert!(!e.message.is_empty());
    if e.status == http::StatusCode::BAD_REQUEST
        && serde_json::from_slice::<Map<String, Value>>(data).is_ok()
        && e.reason != "untranslatable"
    {
        assert!(
            e.param.as_deref().is_some_and(|p| !p.is_empty()),
            "a refusal of a JSON object names no field: {} ({})",
            e.message,
            String::from_utf8_lossy(data)
        );
    }
}

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
    let store = responses::Store::new(4, std::time::Duration::from_secs(60));
    let ctx = Context {
        responses: &store,
        request_id: "req_fuzz",
    };
    let model = body.get("model").cloned();
    match translate(Endpoint::Responses, body, &ctx) {
        Ok((chat, translation)) => {
            // The route name passes through as the client wrote it (the handler refuses a
            // missing one).
            assert_eq!(chat.get("model"), model.as_ref(), "{chat:?}");
            assert!(
                chat.get("messages").is_some_and(Value::is_array),
                "no messages: {chat:?}"
            );
            let _ = tokens::chat_prompt(&chat, true);
            serde_json::to_vec(&chat).unwrap();
            let Some(mut t) = translation else {
                panic!("the Responses format is translated back");
            };
            t.prompt_estimate(7);
            let usage = Usage {
                prompt: 3,
                output: 2,
                ..Usage::default()
            };
            let out = t
                .response(ANSWER.as_bytes(), Some(&usage))
                .expect("the answer translates");
            serde_json::from_slice::<Value>(&out).expect("a translated answer is JSON");
            let mut enc = t.encoder();
            let mut out = VecDeque::new();
            for c in CHUNKS {
                enc.chunk(Chunk::Data(Bytes::from_static(c.as_bytes())), &mut out);
            }
            enc.chunk(Chunk::Done, &mut out);
            assert!(!out.is_empty(), "the stream encoder wrote nothing");
        }
        Err(e) => check_refusal(&e, data),
    }
});
