//! The finer points of the Messages translation. The golden fixtures
//! (`tests/fixtures/messages/`) run in the `golden` test binary.

use std::collections::VecDeque;

use bytes::Bytes;
use serde_json::{Value, json};

use super::*;
use crate::ingress::responses::Store;
use crate::internal::Chunk;

const REQUEST_ID: &str = "req_test-1";

fn translate_obj(v: &Value) -> Result<Translated, ApiError> {
    let store = Store::default();
    let ctx = Context {
        responses: &store,
        request_id: REQUEST_ID,
    };
    // As the handler does: it estimates every translated prompt and hands the count over.
    let (body, mut t) = to_chat(v.as_object().expect("request is an object").clone(), &ctx)?;
    if let Some(t) = t.as_mut() {
        t.prompt_estimate(crate::tokens::chat_prompt(&body, false).tokens);
    }
    Ok((body, t))
}

fn default_stream_request() -> Value {
    json!({"model": "chat", "max_tokens": 256, "stream": true,
           "messages": [{"role": "user", "content": "What is the weather in Paris?"}]})
}

#[test]
fn tool_ids_round_trip_to_the_upstream_id() {
    assert_eq!(tool_use_id(Some("call_abc"), "msg_x", 0), "toolu_call_abc");
    assert_eq!(tool_use_id(Some("toolu_01A"), "msg_x", 0), "toolu_01A");
    assert_eq!(tool_use_id(None, "msg_x", 2), "toolu_x_2");
    assert_eq!(upstream_tool_id("toolu_call_abc"), "call_abc");
    assert_eq!(upstream_tool_id("Ab3dE6gh9"), "Ab3dE6gh9");
    assert_eq!(upstream_tool_id("toolu_"), "toolu_");
    assert_eq!(message_id("llmesh-00ff"), "msg_llmesh00ff");
}

#[test]
fn count_tokens_matches_the_limit_estimate() {
    let req = json!({"model": "chat", "system": "Be brief.",
                     "messages": [{"role": "user", "content": "Hello, world!"}]});
    let (model, body) = count_tokens(req.to_string().as_bytes()).unwrap();
    assert_eq!(model, "chat");
    // 3 reply framing + (4 + 3) system + (4 + 4) user, as tokens::chat_prompt counts.
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({"input_tokens": 18})
    );
    // count_tokens takes no max_tokens; an unknown role is still refused.
    let bad = json!({"model": "chat", "messages": [{"role": "system", "content": "x"}]});
    let e = count_tokens(bad.to_string().as_bytes()).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("messages.0.role"));
}

#[test]
fn provider_usage_wins_over_the_body() {
    let (_, t) = translate_obj(&default_stream_request()).unwrap();
    let openai = json!({"model": "m", "choices": [{"index": 0, "finish_reason": "stop",
                        "message": {"role": "assistant", "content": "Hi"}}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1}});
    let usage = Usage {
        prompt: 100,
        cached_input: 30,
        cache_write: 20,
        output: 7,
        estimated: false,
    };
    let out = t
        .unwrap()
        .response(openai.to_string().as_bytes(), Some(&usage))
        .unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        v["usage"],
        json!({"input_tokens": 50, "output_tokens": 7,
               "cache_creation_input_tokens": 20, "cache_read_input_tokens": 30})
    );
}

#[test]
fn nothing_follows_the_end_of_a_stream() {
    let (_, t) = translate_obj(&default_stream_request()).unwrap();
    let mut e = t.unwrap().encoder();
    let mut out = VecDeque::new();
    let chunk = |s: &str| Chunk::Data(Bytes::from(s.to_string()));
    e.chunk(
        chunk(r#"{"model":"m","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#),
        &mut out,
    );
    // The text is out at once, not held for the next chunk.
    let first: String = out
        .drain(..)
        .map(|b| String::from_utf8(b.to_vec()).unwrap())
        .collect();
    assert!(first.contains(r#""text_delta","text":"Hi""#), "{first}");
    e.error("llmesh: upstream overloaded (529)", &mut out);
    e.chunk(Chunk::Done, &mut out);
    e.error("again", &mut out);
    let rest: String = out
        .drain(..)
        .map(|b| String::from_utf8(b.to_vec()).unwrap())
        .collect();
    assert_eq!(
        rest,
        "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"llmesh: upstream overloaded (529)\"}}\n\n"
    );
}
