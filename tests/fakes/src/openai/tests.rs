use http::HeaderMap;
use serde_json::{Value, json};

use super::*;
use crate::scenario::Options;

fn ctx<'a>(options: &'a Options, headers: &'a HeaderMap, stream: bool) -> Ctx<'a> {
    Ctx {
        seq: 1,
        options,
        headers,
        stream,
    }
}

fn chat_ep() -> Endpoint {
    OpenAi
        .route(&Method::POST, "/v1/chat/completions", None)
        .unwrap()
}

fn json_of(r: &Reply) -> Value {
    serde_json::from_slice(&r.parts[0]).unwrap()
}

fn events(r: &Reply) -> Vec<Value> {
    let text: String = r
        .parts
        .iter()
        .map(|p| String::from_utf8(p.to_vec()).unwrap())
        .collect();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    text.split("\n\n")
        .filter(|e| !e.is_empty() && *e != "data: [DONE]")
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
        .collect()
}

#[test]
fn routes_openai_and_azure_paths() {
    let r = |m: Method, p: &str| OpenAi.route(&m, p, None);
    assert_eq!(r(Method::POST, "/chat/completions").unwrap().op, Op::Chat);
    assert_eq!(r(Method::POST, "/v1/embeddings").unwrap().op, Op::Embedding);
    assert_eq!(
        r(Method::GET, "/v1/models/gpt-4o")
            .unwrap()
            .path_model
            .as_deref(),
        Some("gpt-4o")
    );
    let az = r(Method::POST, "/openai/deployments/prod-4o/chat/completions").unwrap();
    assert_eq!((az.op, az.flavor), (Op::Chat, "azure"));
    assert_eq!(az.path_model.as_deref(), Some("prod-4o"));
    assert!(r(Method::GET, "/v1/chat/completions").is_none());
    assert!(r(Method::POST, "/v1/responses").is_none());
}

#[test]
fn azure_needs_api_version_and_a_key() {
    let ep = OpenAi
        .route(
            &Method::POST,
            "/openai/deployments/d/chat/completions",
            None,
        )
        .unwrap();
    let mut h = HeaderMap::new();
    let r = OpenAi
        .check(&ep, &h, Some("api-version=2024-10-21"))
        .unwrap();
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    h.insert("api-key", "k".parse().unwrap());
    assert_eq!(
        OpenAi.check(&ep, &h, None).unwrap().status,
        StatusCode::NOT_FOUND
    );
    assert!(
        OpenAi
            .check(&ep, &h, Some("api-version=2024-10-21"))
            .is_none()
    );
}

#[test]
fn chat_answers_echo_the_prompt_with_usage() {
    let (o, h) = (Options::default(), HeaderMap::new());
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "ping pong"}], "n": 2});
    let r = OpenAi.answer(&chat_ep(), &body, &ctx(&o, &h, false));
    assert_eq!(r.status, StatusCode::OK);
    let v = json_of(&r);
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    assert_eq!(
        v["choices"][1]["message"]["content"],
        "Hello from the fake provider. You said: ping pong"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["completion_tokens"], 18);
    assert!(
        r.headers
            .iter()
            .any(|(k, v)| *k == "x-request-id" && v.starts_with("req_"))
    );
}

#[test]
fn stop_and_max_tokens_cut_the_answer() {
    let (o, h) = (Options::default(), HeaderMap::new());
    let body =
        json!({"model": "m", "messages": [{"role": "user", "content": "a b c"}], "stop": ["fake"]});
    let v = json_of(&OpenAi.answer(&chat_ep(), &body, &ctx(&o, &h, false)));
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from the ");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let body =
        json!({"model": "m", "messages": [{"role": "user", "content": "a"}], "max_tokens": 2});
    let v = json_of(&OpenAi.answer(&chat_ep(), &body, &ctx(&o, &h, false)));
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
}

#[test]
fn streams_send_usage_only_when_asked() {
    let (o, h) = (Options::default(), HeaderMap::new());
    let mut body =
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true});
    let evs = events(&OpenAi.answer(&chat_ep(), &body, &ctx(&o, &h, true)));
    assert!(evs.iter().all(|e| e.get("usage").is_none()));
    assert_eq!(evs[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = evs
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Hello from the fake provider. You said: hi");
    assert_eq!(evs.last().unwrap()["choices"][0]["finish_reason"], "stop");

    body["stream_options"] = json!({"include_usage": true});
    let evs = events(&OpenAi.answer(&chat_ep(), &body, &ctx(&o, &h, true)));
    let (last, rest) = evs.split_last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 8);
    assert!(
        rest.iter()
            .all(|e| e["usage"].is_null() && e.get("usage").is_some())
    );
}

#[test]
fn tool_calls_carry_schema_shaped_arguments() {
    let (o, h) = (Options::default(), HeaderMap::new());
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "weather?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters":
            {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}}]});
    let v = json_of(&OpenAi.answer(&chat_ep(), &body, &ctx(&o, &h, false)));
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "fake", "days": 1}));
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");

    let evs = events(&OpenAi.answer(&chat_ep(), &body, &ctx(&o, &h, true)));
    let streamed: String = evs
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(serde_json::from_str::<Value>(&streamed).unwrap(), args);
}

#[test]
fn json_schema_output_parses() {
    let (o, h) = (Options::default(), HeaderMap::new());
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema":
            {"type": "object", "properties": {"ok": {"type": "boolean"}}}}}});
    let v = json_of(&OpenAi.answer(&chat_ep(), &body, &ctx(&o, &h, false)));
    let content: Value =
        serde_json::from_str(v["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert_eq!(content, json!({"ok": true}));
}

#[test]
fn embeddings_come_as_floats_or_base64_of_the_same_floats() {
    let (o, h) = (Options::default(), HeaderMap::new());
    let ep = OpenAi.route(&Method::POST, "/v1/embeddings", None).unwrap();
    let f = json_of(&OpenAi.answer(
        &ep,
        &json!({"model": "text-embedding-3-small", "input": ["a", "b"], "dimensions": 4}),
        &ctx(&o, &h, false),
    ));
    let b = json_of(&OpenAi.answer(
        &ep,
        &json!({"model": "text-embedding-3-small", "input": ["a", "b"], "dimensions": 4, "encoding_format": "base64"}),
        &ctx(&o, &h, false),
    ));
    assert_eq!(f["data"].as_array().unwrap().len(), 2);
    let floats: Vec<f32> = f["data"][1]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    let bytes: Vec<u8> = floats.iter().flat_map(|x| x.to_le_bytes()).collect();
    assert_eq!(b["data"][1]["embedding"], base64(&bytes));
}

#[test]
fn errors_have_openai_shape_and_rate_limits_say_when_to_retry() {
    let h = HeaderMap::new();
    let o = Options {
        retry_after: Some(std::time::Duration::from_millis(250)),
        ..Options::default()
    };
    let r = OpenAi.failure(&chat_ep(), Failure::Status(429), &ctx(&o, &h, false));
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    let e = &json_of(&r)["error"];
    assert_eq!(e["code"], "rate_limit_exceeded");
    for k in ["message", "type", "param", "code"] {
        assert!(e.get(k).is_some(), "{k}");
    }
    let hv = |name: &str| {
        r.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(hv("retry-after-ms").as_deref(), Some("250"));
    assert_eq!(hv("retry-after").as_deref(), Some("1"));
    let r = OpenAi.failure(&chat_ep(), Failure::ContextLength, &ctx(&o, &h, false));
    assert_eq!(json_of(&r)["error"]["code"], "context_length_exceeded");
    let r = OpenAi.failure(&chat_ep(), Failure::Status(502), &ctx(&o, &h, false));
    assert_eq!(r.content_type, "text/html");
    let r = OpenAi.failure(&chat_ep(), Failure::Malformed, &ctx(&o, &h, false));
    assert!(serde_json::from_slice::<Value>(&r.parts[0]).is_err());
}

#[test]
fn fast_answers_are_valid_openai_json() {
    let ep = chat_ep();
    let r = OpenAi.fast(&ep, br#"{"model":"gpt-x","messages":[]}"#, 5);
    let v = json_of(&r);
    assert_eq!(v["model"], "gpt-x");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from fast.");
    let r = OpenAi.fast(
        &ep,
        br#"{"model": "m", "stream": true, "stream_options": {"include_usage": true}}"#,
        5,
    );
    let evs = events(&r);
    assert_eq!(evs.len(), 6);
    assert_eq!(evs[5]["usage"]["total_tokens"], 12);
    let emb = OpenAi.route(&Method::POST, "/embeddings", None).unwrap();
    let v = json_of(&OpenAi.fast(&emb, br#"{"input":"x","encoding_format":"base64"}"#, 1));
    assert_eq!(
        v["data"][0]["embedding"],
        base64(&0.375f32.to_le_bytes().repeat(8))
    );
}
