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
        state: Box::leak(Box::default()),
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
    assert_eq!(r(Method::POST, "/v1/responses").unwrap().op, Op::Responses);
    assert!(r(Method::GET, "/v1/responses").is_none());
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

// --- Responses API ------------------------------------------------------------------------

fn responses_ep() -> Endpoint {
    OpenAi.route(&Method::POST, "/v1/responses", None).unwrap()
}

/// The typed events of a Responses stream: `event:` matches `type`, sequence numbers count from
/// 0, and there is no `[DONE]`.
fn typed_events(r: &Reply) -> Vec<Value> {
    let text: String = r
        .parts
        .iter()
        .map(|p| String::from_utf8(p.to_vec()).unwrap())
        .collect();
    assert!(!text.contains("[DONE]"), "{text}");
    let evs: Vec<Value> = text
        .split_terminator("\n\n")
        .map(|e| {
            let (name, data) = e.split_once('\n').unwrap();
            let v: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(
                Some(name),
                v["type"].as_str().map(|t| format!("event: {t}")).as_deref()
            );
            v
        })
        .collect();
    for (i, e) in evs.iter().enumerate() {
        assert_eq!(e["sequence_number"], i);
    }
    evs
}

fn kinds(evs: &[Value]) -> Vec<&str> {
    evs.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

#[test]
fn a_response_echoes_the_input_with_usage() {
    let (o, h) = (Options::default(), HeaderMap::new());
    let state = crate::dialect::State::default();
    let c = Ctx {
        state: &state,
        ..ctx(&o, &h, false)
    };
    let body = json!({"model": "gpt-4.1", "input": "ping pong", "metadata": {"k": "v"}});
    let v = json_of(&OpenAi.answer(&responses_ep(), &body, &c));
    assert_eq!(v["object"], "response");
    assert!(v["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(v["status"], "completed");
    assert_eq!(v["model"], "gpt-4.1");
    assert_eq!(v["metadata"]["k"], "v");
    let msg = &v["output"][0];
    assert_eq!(
        (&msg["type"], &msg["role"]),
        (&json!("message"), &json!("assistant"))
    );
    assert_eq!(
        msg["content"][0]["text"],
        "Hello from the fake provider. You said: ping pong"
    );
    assert_eq!(v["usage"]["output_tokens"], 9);
    assert_eq!(v["usage"]["input_tokens_details"]["cached_tokens"], 0);
    assert_eq!(v["usage"]["output_tokens_details"]["reasoning_tokens"], 0);
    assert_eq!(
        v["usage"]["total_tokens"],
        v["usage"]["input_tokens"].as_u64().unwrap() + 9
    );
}

#[test]
fn a_streamed_response_has_the_documented_events_in_order() {
    let (o, h) = (
        Options {
            words: Some(3),
            ..Options::default()
        },
        HeaderMap::new(),
    );
    let state = crate::dialect::State::default();
    let c = Ctx {
        state: &state,
        ..ctx(&o, &h, true)
    };
    let r = OpenAi.answer(
        &responses_ep(),
        &json!({"model": "m", "input": "x", "stream": true}),
        &c,
    );
    assert!(r.content_type.starts_with("text/event-stream"));
    let evs = typed_events(&r);
    assert_eq!(
        kinds(&evs),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    assert_eq!(evs[0]["response"]["status"], "in_progress");
    let done = &evs[10]["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"][0]["content"][0]["text"], "Hello from the");
    assert_eq!(evs[7]["text"], "Hello from the");
    assert_eq!(done["usage"]["output_tokens"], 3);
}

#[test]
fn function_calls_stream_their_arguments_and_tool_results_are_echoed() {
    let (o, h) = (Options::default(), HeaderMap::new());
    let state = crate::dialect::State::default();
    let c = Ctx {
        state: &state,
        ..ctx(&o, &h, true)
    };
    let tools = json!([{"type": "function", "name": "get_weather", "parameters":
        {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]);
    let r = OpenAi.answer(
        &responses_ep(),
        &json!({"model": "m", "input": "weather?", "tools": tools, "stream": true}),
        &c,
    );
    let evs = typed_events(&r);
    let k = kinds(&evs);
    assert_eq!(k[2], "response.output_item.added");
    assert_eq!(evs[2]["item"]["type"], "function_call");
    assert_eq!(evs[2]["item"]["arguments"], "");
    let args: String = evs
        .iter()
        .filter(|e| e["type"] == "response.function_call_arguments.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    let done = evs
        .iter()
        .find(|e| e["type"] == "response.function_call_arguments.done")
        .unwrap();
    assert_eq!(done["arguments"], args);
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap(),
        json!({"city": "fake"})
    );
    let call = &evs.last().unwrap()["response"]["output"][0];
    assert_eq!(call["name"], "get_weather");
    assert!(call["call_id"].as_str().unwrap().starts_with("call_"));

    let c = Ctx { stream: false, ..c };
    let body = json!({"model": "m", "tools": tools, "input": [
        {"role": "user", "content": "weather?"},
        {"type": "function_call", "call_id": call["call_id"], "name": "get_weather", "arguments": args},
        {"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"}]});
    let v = json_of(&OpenAi.answer(&responses_ep(), &body, &c));
    assert_eq!(
        v["output"][0]["content"][0]["text"],
        "The tool returned: sunny"
    );
}

#[test]
fn web_search_runs_as_a_built_in_tool_with_a_citation() {
    let (o, h) = (Options::default(), HeaderMap::new());
    let state = crate::dialect::State::default();
    let c = Ctx {
        state: &state,
        ..ctx(&o, &h, true)
    };
    let body = json!({"model": "m", "input": "good news", "tools": [{"type": "web_search"}], "stream": true});
    let evs = typed_events(&OpenAi.answer(&responses_ep(), &body, &c));
    let k = kinds(&evs);
    for step in ["in_progress", "searching", "completed"] {
        assert!(
            k.contains(&format!("response.web_search_call.{step}").as_str()),
            "{k:?}"
        );
    }
    assert!(k.contains(&"response.output_text.annotation.added"));
    let out = &evs.last().unwrap()["response"]["output"];
    assert_eq!(out[0]["type"], "web_search_call");
    assert_eq!(out[0]["action"]["query"], "good news");
    let ann = &out[1]["content"][0]["annotations"][0];
    assert_eq!(ann["type"], "url_citation");
    assert_eq!(ann["url"], responses::CITED_URL);
}

#[test]
fn previous_response_id_continues_a_stored_response_and_unknown_ids_are_refused() {
    let (o, h) = (Options::default(), HeaderMap::new());
    let state = crate::dialect::State::default();
    let c = Ctx {
        state: &state,
        ..ctx(&o, &h, false)
    };
    let first = json_of(&OpenAi.answer(
        &responses_ep(),
        &json!({"model": "m", "input": "my name is Ada"}),
        &c,
    ));
    let c2 = Ctx { seq: 2, ..c };
    let second = json_of(&OpenAi.answer(
        &responses_ep(),
        &json!({"model": "m", "input": "name?", "previous_response_id": first["id"],
                "reasoning": {"effort": "low"}}),
        &c2,
    ));
    assert_eq!(second["previous_response_id"], first["id"]);
    // The earlier turns count as cached input; reasoning adds an item and tokens.
    assert!(
        second["usage"]["input_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(second["usage"]["input_tokens"].as_u64() > first["usage"]["input_tokens"].as_u64());
    assert_eq!(second["output"][0]["type"], "reasoning");
    assert_eq!(
        second["usage"]["output_tokens_details"]["reasoning_tokens"],
        8
    );

    let r = OpenAi.answer(
        &responses_ep(),
        &json!({"model": "m", "input": "x", "previous_response_id": "resp_nope"}),
        &c2,
    );
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let e = &json_of(&r)["error"];
    assert_eq!(e["code"], "previous_response_not_found");
    assert_eq!(e["param"], "previous_response_id");
    assert_eq!(
        e["message"],
        "Previous response with id 'resp_nope' not found."
    );

    // store: false keeps nothing.
    let c3 = Ctx { seq: 3, ..c2 };
    let unstored = json_of(&OpenAi.answer(
        &responses_ep(),
        &json!({"model": "m", "input": "x", "store": false}),
        &c3,
    ));
    let r = OpenAi.answer(
        &responses_ep(),
        &json!({"model": "m", "input": "x", "previous_response_id": unstored["id"]}),
        &c3,
    );
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[test]
fn max_output_tokens_makes_the_response_incomplete() {
    let (o, h) = (Options::default(), HeaderMap::new());
    let state = crate::dialect::State::default();
    let c = Ctx {
        state: &state,
        ..ctx(&o, &h, true)
    };
    let body = json!({"model": "m", "input": "x", "max_output_tokens": 2, "stream": true});
    let evs = typed_events(&OpenAi.answer(&responses_ep(), &body, &c));
    let last = evs.last().unwrap();
    assert_eq!(last["type"], "response.incomplete");
    assert_eq!(
        last["response"]["incomplete_details"]["reason"],
        "max_output_tokens"
    );
    assert_eq!(last["response"]["usage"]["output_tokens"], 2);
}

#[test]
fn responses_failures_are_in_openai_shape() {
    let (o, h) = (Options::default(), HeaderMap::new());
    let state = crate::dialect::State::default();
    let c = Ctx {
        state: &state,
        ..ctx(&o, &h, false)
    };
    let ep = responses_ep();
    let r = OpenAi.failure(&ep, Failure::ContextLength, &c);
    assert_eq!(json_of(&r)["error"]["code"], "context_length_exceeded");
    assert_eq!(json_of(&r)["error"]["param"], "input");
    let r = OpenAi.failure(&ep, Failure::Status(429), &c);
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers.iter().any(|(k, _)| *k == "retry-after"));
    let v = json_of(&OpenAi.failure(&ep, Failure::Safety, &c));
    assert_eq!(v["incomplete_details"]["reason"], "content_filter");
    let r = OpenAi.failure(&ep, Failure::Malformed, &c);
    assert!(serde_json::from_slice::<Value>(&r.parts[0]).is_err());
    let missing = OpenAi.answer(&ep, &json!({"input": "x"}), &c);
    assert_eq!(json_of(&missing)["error"]["param"], "model");
}

#[test]
fn fast_mode_answers_responses_too() {
    let ep = responses_ep();
    let v = json_of(&OpenAi.fast(&ep, br#"{"model":"gpt-4.1","input":"x"}"#, 1));
    assert_eq!(v["object"], "response");
    assert_eq!(v["model"], "gpt-4.1");
    let r = OpenAi.fast(&ep, br#"{"model":"m","input":"x","stream":true}"#, 1);
    let evs = typed_events(&r);
    assert_eq!(evs.last().unwrap()["type"], "response.completed");
}
