use std::time::Duration;

use http::Method;
use http::header::AUTHORIZATION;
use http_body_util::BodyExt;
use serde_json::json;

use llmesh_api::snapshot::{Azure, SecretValue};

use super::*;

const KEY: &str = "sk-proj-abcdefghijklmnop0123";

fn backend(provider: ProviderKind) -> Backend {
    Backend {
        name: "b".into(),
        variant: "b".into(),
        provider,
        model: "some-model".into(),
        base_url: provider
            .default_base_url()
            .unwrap_or("http://10.0.0.1:8000/v1")
            .into(),
        api_key: Some(SecretValue::new(KEY)),
        weight: 1,
        prices: Default::default(),
        priced: false,
        context_window: None,
        max_concurrency: None,
        headers: vec![],
        azure: None,
        mock: None,
    }
}

fn chat(extra: Value) -> Map<String, Value> {
    let mut body = json!({
        "model": "some-model",
        "messages": [{"role": "user", "content": "hi"}]
    });
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().cloned().unwrap_or_default());
    body.as_object().unwrap().clone()
}

/// Builds the upstream request and returns it with its JSON body. Built twice, from the parsed
/// body and from the client's bytes (a client that sent another model), which must agree.
fn request(
    b: &Backend,
    op: Op,
    body: &Map<String, Value>,
    stream: bool,
) -> (Request<Full<Bytes>>, Value) {
    let json_of = |req: &Request<Full<Bytes>>| -> Value {
        let bytes = futures::executor::block_on(req.body().clone().collect())
            .unwrap()
            .to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    };
    // As the proxy calls it: the body already names the backend's model.
    let mut body = body.clone();
    body.insert("model".into(), Value::from(b.model.as_str()));
    let body = &body;
    let req = OpenAiFamily.request(b, op, body, None, stream).unwrap();
    let json = json_of(&req);
    let mut sent = body.clone();
    sent.insert("model".into(), Value::from("the-route"));
    let raw = serde_json::to_vec(&sent).unwrap();
    let spliced = OpenAiFamily
        .request(b, op, body, Some(&raw), stream)
        .unwrap();
    assert_eq!(json_of(&spliced), json, "spliced from the client's bytes");
    assert_eq!(
        (spliced.uri(), spliced.headers()),
        (req.uri(), req.headers())
    );
    (req, json)
}

fn header<'a>(req: &'a Request<Full<Bytes>>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

#[test]
fn openai_family_requests_go_to_the_base_url_with_a_bearer_key() {
    for (kind, url) in [
        (
            ProviderKind::Openai,
            "https://api.openai.com/v1/chat/completions",
        ),
        (
            ProviderKind::Groq,
            "https://api.groq.com/openai/v1/chat/completions",
        ),
        (
            ProviderKind::Deepseek,
            "https://api.deepseek.com/v1/chat/completions",
        ),
        (
            ProviderKind::Mistral,
            "https://api.mistral.ai/v1/chat/completions",
        ),
        (
            ProviderKind::Together,
            "https://api.together.xyz/v1/chat/completions",
        ),
        (
            ProviderKind::OpenaiCompatible,
            "http://10.0.0.1:8000/v1/chat/completions",
        ),
    ] {
        let (req, _) = request(&backend(kind), Op::Chat, &chat(json!({})), false);
        assert_eq!(req.method(), Method::POST);
        assert_eq!(req.uri(), url, "{kind:?}");
        let auth = req.headers().get(AUTHORIZATION).unwrap();
        assert_eq!(auth, format!("Bearer {KEY}").as_str());
        assert!(
            auth.is_sensitive(),
            "kept out of debug output and HPACK tables"
        );
        assert!(req.headers().get("api-key").is_none());
        assert_eq!(header(&req, "content-type"), Some("application/json"));
        assert_eq!(header(&req, "accept"), Some("application/json"));
    }
    let b = backend(ProviderKind::Openai);
    let (req, _) = request(&b, Op::Embedding, &chat(json!({"input": "x"})), false);
    assert_eq!(req.uri(), "https://api.openai.com/v1/embeddings");
    let (req, _) = request(&b, Op::Completion, &chat(json!({"prompt": "x"})), true);
    assert_eq!(req.uri(), "https://api.openai.com/v1/completions");
    assert_eq!(header(&req, "accept"), Some("text/event-stream"));
    // A keyless self-hosted server gets no auth header at all.
    let mut vllm = backend(ProviderKind::Vllm);
    vllm.api_key = None;
    let (req, _) = request(&vllm, Op::Chat, &chat(json!({})), false);
    assert_eq!(req.uri(), "http://127.0.0.1:8000/v1/chat/completions");
    assert!(req.headers().get(AUTHORIZATION).is_none());
}

#[test]
fn azure_uses_the_deployment_url_api_version_and_api_key_header() {
    let mut b = backend(ProviderKind::Azure);
    b.base_url = "https://myres.openai.azure.com/openai".into();
    b.azure = Some(Azure {
        deployment: "gpt4o-prod".into(),
        api_version: "2024-10-21".into(),
    });
    let (req, body) = request(&b, Op::Chat, &chat(json!({})), false);
    assert_eq!(
        req.uri(),
        "https://myres.openai.azure.com/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21"
    );
    assert_eq!(header(&req, "api-key"), Some(KEY));
    assert!(req.headers().get(AUTHORIZATION).is_none());
    assert_eq!(body["messages"][0]["content"], "hi");
    let (req, _) = request(&b, Op::Embedding, &chat(json!({"input": "x"})), false);
    assert_eq!(
        req.uri(),
        "https://myres.openai.azure.com/openai/deployments/gpt4o-prod/embeddings?api-version=2024-10-21"
    );
}

#[test]
fn openrouter_gets_its_attribution_headers() {
    let mut b = backend(ProviderKind::Openrouter);
    b.model = "anthropic/claude-sonnet-4".into();
    b.headers = vec![
        ("http-referer".into(), "https://app.example.com".into()),
        ("x-title".into(), "Example App".into()),
    ];
    let (req, _) = request(&b, Op::Chat, &chat(json!({})), false);
    assert_eq!(req.uri(), "https://openrouter.ai/api/v1/chat/completions");
    assert_eq!(
        header(&req, "http-referer"),
        Some("https://app.example.com")
    );
    assert_eq!(header(&req, "x-title"), Some("Example App"));
    assert_eq!(
        header(&req, "authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
}

#[test]
fn streams_ask_for_usage_except_on_mistral() {
    let body = chat(json!({"stream": true}));
    for kind in [
        ProviderKind::Openai,
        ProviderKind::Azure,
        ProviderKind::Groq,
        ProviderKind::Deepseek,
        ProviderKind::Vllm,
    ] {
        let mut b = backend(kind);
        if kind == ProviderKind::Azure {
            b.azure = Some(Azure {
                deployment: "d".into(),
                api_version: "v".into(),
            });
        }
        let (_, sent) = request(&b, Op::Chat, &body, true);
        assert_eq!(
            sent["stream_options"],
            json!({"include_usage": true}),
            "{kind:?}"
        );
    }
    let (_, sent) = request(&backend(ProviderKind::Mistral), Op::Chat, &body, true);
    assert!(sent.get("stream_options").is_none(), "{sent}");
    // Other stream options are kept; non-streaming requests are left alone.
    let body = chat(json!({"stream": true, "stream_options": {"include_obfuscation": false}}));
    let (_, sent) = request(&backend(ProviderKind::Openai), Op::Chat, &body, true);
    assert_eq!(
        sent["stream_options"],
        json!({"include_obfuscation": false, "include_usage": true})
    );
    let (_, sent) = request(
        &backend(ProviderKind::Openai),
        Op::Chat,
        &chat(json!({})),
        false,
    );
    assert!(sent.get("stream_options").is_none());
}

#[test]
fn max_completion_tokens_becomes_max_tokens_where_only_that_is_known() {
    let body = chat(json!({"max_completion_tokens": 300}));
    for kind in [
        ProviderKind::Mistral,
        ProviderKind::Together,
        ProviderKind::Ollama,
    ] {
        let (_, sent) = request(&backend(kind), Op::Chat, &body, false);
        assert_eq!(sent["max_tokens"], 300, "{kind:?}");
        assert!(sent.get("max_completion_tokens").is_none(), "{kind:?}");
    }
    for kind in [
        ProviderKind::Openai,
        ProviderKind::Groq,
        ProviderKind::Deepseek,
    ] {
        let (_, sent) = request(&backend(kind), Op::Chat, &body, false);
        assert_eq!(sent["max_completion_tokens"], 300, "{kind:?}");
        assert!(sent.get("max_tokens").is_none(), "{kind:?}");
    }
}

#[test]
fn unknown_fields_pass_through_untouched_and_in_order() {
    let body = chat(json!({
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
        "logit_bias": {"50256": -100},
        "reasoning_effort": "low",
        "some_future_field": {"nested": [1, 2.5, null, "s"]},
        "n": 2
    }));
    let (_, sent) = request(&backend(ProviderKind::Openai), Op::Chat, &body, false);
    assert_eq!(sent, Value::Object(body.clone()));
    let keys: Vec<&String> = sent.as_object().unwrap().keys().collect();
    assert_eq!(keys, body.keys().collect::<Vec<_>>());
    // Also when the adapter edits the body.
    let (_, sent) = request(&backend(ProviderKind::Mistral), Op::Chat, &body, true);
    assert_eq!(sent["some_future_field"], body["some_future_field"]);
    assert_eq!(sent["response_format"], body["response_format"]);
}

#[test]
fn answers_pass_through_byte_for_byte_with_usage_read_on_the_side() {
    let b = backend(ProviderKind::Openai);
    let raw = Bytes::from(
        r#"{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":120,"completion_tokens":7,"total_tokens":127,"prompt_tokens_details":{"cached_tokens":100}}}"#,
    );
    let d = OpenAiFamily.decode(&b, Op::Chat, raw.clone()).unwrap();
    assert_eq!(d.body, raw);
    assert_eq!(
        d.usage,
        Some(Usage {
            prompt: 120,
            cached_input: 100,
            cache_write: 0,
            output: 7,
            estimated: false
        })
    );
    // DeepSeek reports cache hits in its own field.
    let deepseek = Bytes::from(
        r#"{"choices":[],"usage":{"prompt_tokens":64,"completion_tokens":10,"total_tokens":74,"prompt_cache_hit_tokens":48,"prompt_cache_miss_tokens":16}}"#,
    );
    let u = OpenAiFamily
        .decode(&backend(ProviderKind::Deepseek), Op::Chat, deepseek)
        .unwrap()
        .usage
        .unwrap();
    assert_eq!((u.prompt, u.cached_input, u.output), (64, 48, 10));
    // Groq puts usage under x_groq in some answers.
    let groq = Bytes::from(
        r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"x_groq":{"id":"req_01","usage":{"queue_time":0.02,"prompt_tokens":18,"prompt_time":0.001,"completion_tokens":5,"completion_time":0.01,"total_tokens":23,"total_time":0.011}}}"#,
    );
    let u = OpenAiFamily
        .decode(&backend(ProviderKind::Groq), Op::Chat, groq)
        .unwrap()
        .usage
        .unwrap();
    assert_eq!((u.prompt, u.output), (18, 5));
    // No usage at all.
    let none = Bytes::from(r#"{"choices":[{"index":0,"message":{"content":"x"}}]}"#);
    assert_eq!(OpenAiFamily.decode(&b, Op::Chat, none).unwrap().usage, None);
}

#[test]
fn broken_or_error_answers_with_status_200_are_retryable() {
    let b = backend(ProviderKind::Openai);
    let e = OpenAiFamily
        .decode(
            &b,
            Op::Chat,
            Bytes::from_static(b"<html>502 Bad Gateway</html>"),
        )
        .unwrap_err();
    assert_eq!((e.class, e.reason), (ErrorClass::Retryable, "malformed"));
    let e = OpenAiFamily
        .decode(
            &b,
            Op::Chat,
            Bytes::from(format!(
                r#"{{"error":{{"message":"upstream failed for {KEY}","type":"server_error"}}}}"#
            )),
        )
        .unwrap_err();
    assert_eq!((e.class, e.reason), (ErrorClass::Retryable, "error_body"));
    assert!(!e.message.contains(KEY), "{}", e.message);
}

fn error_body(code: &str, message: &str) -> Vec<u8> {
    json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": code}})
        .to_string()
        .into_bytes()
}

fn classify_one(status: u16, headers: &[(&str, &str)], body: &[u8]) -> UpstreamError {
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    OpenAiFamily.error(
        &backend(ProviderKind::Openai),
        StatusCode::from_u16(status).unwrap(),
        &h,
        body,
    )
}

#[test]
fn errors_are_classified_by_status_and_code() {
    for (status, reason) in [
        (408, "status_408"),
        (429, "status_429"),
        (500, "status_5xx"),
        (502, "status_5xx"),
        (503, "status_5xx"),
        (529, "status_5xx"),
    ] {
        let e = classify_one(status, &[], &error_body("x", "try later"));
        assert_eq!(
            (e.class, e.reason),
            (ErrorClass::Retryable, reason),
            "{status}"
        );
        assert_eq!(e.status, Some(StatusCode::from_u16(status).unwrap()));
        assert!(e.openai_body.is_none(), "server errors are not handed back");
    }
    let e = classify_one(
        429,
        &[("retry-after", "20")],
        &error_body("rate_limit_exceeded", "Rate limit reached"),
    );
    assert_eq!(e.retry_after, Some(Duration::from_secs(20)));
    assert_eq!(e.message, "429 Rate limit reached");

    for status in [401, 403] {
        let e = classify_one(
            status,
            &[],
            &error_body(
                "invalid_api_key",
                &format!("Incorrect API key provided: {KEY}."),
            ),
        );
        assert_eq!(e.class, ErrorClass::Auth);
        assert!(!e.message.contains(KEY), "{}", e.message);
        assert!(e.message.contains("<redacted>"), "{}", e.message);
    }
    assert_eq!(
        classify_one(
            404,
            &[],
            &error_body("model_not_found", "The model does not exist")
        )
        .class,
        ErrorClass::NotFound
    );

    // OpenAI's code, and the message alone as vLLM and others send it.
    let e = classify_one(
        400,
        &[],
        &error_body(
            "context_length_exceeded",
            "This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 tokens.",
        ),
    );
    assert_eq!(
        (e.class, e.reason),
        (ErrorClass::ContextWindow, "context_window")
    );
    // vLLM answers with a top-level error object.
    let vllm = json!({"object": "error", "message": "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens.", "type": "BadRequestError", "param": null, "code": 400});
    let e = classify_one(400, &[], vllm.to_string().as_bytes());
    assert_eq!(e.class, ErrorClass::ContextWindow);
    let wrapped = json!({"error": {"message": "prompt is too long: 210000 tokens > 200000 maximum", "type": "invalid_request_error"}});
    let e = classify_one(400, &[], wrapped.to_string().as_bytes());
    assert_eq!(e.class, ErrorClass::ContextWindow);

    let e = classify_one(
        400,
        &[],
        &error_body("content_filter", "The response was filtered"),
    );
    assert_eq!(e.class, ErrorClass::ContentPolicy);

    // Other 4xx are the client's: handed back verbatim when they are OpenAI errors.
    let body = error_body("invalid_value", "Invalid value for 'temperature'.");
    let e = classify_one(400, &[], &body);
    assert_eq!((e.class, e.reason), (ErrorClass::Client, "status_4xx"));
    assert_eq!(e.openai_body.as_deref(), Some(&body[..]));
    let e = classify_one(422, &[], &error_body("x", "Unprocessable"));
    assert_eq!(e.class, ErrorClass::Client);
    // ... with the key redacted wherever it is.
    let e = classify_one(
        400,
        &[],
        &error_body("x", &format!("bad request for {KEY}")),
    );
    assert_eq!(e.class, ErrorClass::Client);
    let passed = String::from_utf8(e.openai_body.unwrap().to_vec()).unwrap();
    assert!(
        passed.contains("bad request for <redacted>") && !passed.contains(KEY),
        "{passed}"
    );
    // Non-JSON bodies are quoted.
    let e = classify_one(502, &[], b"<html>Bad Gateway</html>");
    assert_eq!(e.message, "502 <html>Bad Gateway</html>");
}

fn ev(data: &str) -> SseEvent {
    SseEvent {
        event: String::new(),
        data: Bytes::from(data.to_string()),
    }
}

const ROLE: &str = r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}],"usage":null}"#;
const HELLO: &str = r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hello"},"finish_reason":null}],"usage":null}"#;
const FINISH: &str = r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}"#;
const USAGE: &str = r#"{"id":"c","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15,"prompt_tokens_details":{"cached_tokens":4}}}"#;

fn decode(wants_usage: bool, events: &[&str]) -> (Box<dyn StreamDecoder>, Vec<Chunk>) {
    let mut d = OpenAiFamily.stream(&backend(ProviderKind::Openai), Op::Chat, wants_usage);
    let mut out = Vec::new();
    for e in events {
        d.event(ev(e), &mut out).unwrap();
    }
    (d, out)
}

fn data(s: &str) -> Chunk {
    Chunk::Data(Bytes::from(s.to_string()))
}

#[test]
fn the_usage_chunk_is_read_and_shown_only_to_clients_that_asked() {
    let (d, out) = decode(false, &[ROLE, HELLO, FINISH, USAGE, "[DONE]"]);
    assert_eq!(out, [data(ROLE), data(HELLO), data(FINISH), Chunk::Done]);
    assert_eq!(
        d.usage(),
        Some(Usage {
            prompt: 12,
            cached_input: 4,
            cache_write: 0,
            output: 3,
            estimated: false
        })
    );
    let (_, out) = decode(true, &[ROLE, HELLO, FINISH, USAGE, "[DONE]"]);
    assert_eq!(
        out,
        [
            data(ROLE),
            data(HELLO),
            data(FINISH),
            data(USAGE),
            Chunk::Done
        ]
    );
}

#[test]
fn groq_stream_usage_under_x_groq_is_read() {
    let last = r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"x_groq":{"id":"req_01","usage":{"queue_time":0.01,"prompt_tokens":20,"completion_tokens":6,"total_tokens":26}}}"#;
    let mut d = OpenAiFamily.stream(&backend(ProviderKind::Groq), Op::Chat, false);
    let mut out = Vec::new();
    for e in [ROLE, HELLO, last, "[DONE]"] {
        d.event(ev(e), &mut out).unwrap();
    }
    assert_eq!(
        out[2],
        data(last),
        "a content-bearing chunk is never hidden"
    );
    let u = d.usage().unwrap();
    assert_eq!((u.prompt, u.output), (20, 6));
}

#[test]
fn a_stream_ends_at_done_or_at_a_finish_reason_and_is_cut_otherwise() {
    let (mut d, _) = decode(false, &[ROLE, HELLO, FINISH, "[DONE]"]);
    let mut out = Vec::new();
    d.finish(&mut out).unwrap();
    assert!(out.is_empty(), "[DONE] already ended it");
    // Anything after [DONE] is ignored.
    d.event(ev(HELLO), &mut out).unwrap();
    assert!(out.is_empty());

    // Some servers stop after finish_reason without [DONE]: still complete.
    let (mut d, _) = decode(false, &[ROLE, HELLO, FINISH]);
    let mut out = Vec::new();
    d.finish(&mut out).unwrap();
    assert_eq!(out, [Chunk::Done]);

    // Cut before any finish_reason: an error, and the output estimate counts what came.
    let (mut d, _) = decode(false, &[ROLE, HELLO, HELLO, HELLO]);
    let mut out = Vec::new();
    let e = d.finish(&mut out).unwrap_err();
    assert_eq!((e.class, e.reason), (ErrorClass::Retryable, "stream_cut"));
    assert!(out.is_empty(), "no [DONE] for a cut stream");
    assert_eq!(d.output_estimate(), 3);
    assert_eq!(d.usage(), None);
}

#[test]
fn errors_and_garbage_inside_a_stream_are_failures() {
    let mut d = OpenAiFamily.stream(&backend(ProviderKind::Openai), Op::Chat, false);
    let mut out = Vec::new();
    d.event(ev(ROLE), &mut out).unwrap();
    let e = d
        .event(
            ev(&format!(
                r#"{{"error":{{"message":"overloaded; key {KEY}","type":"server_error"}}}}"#
            )),
            &mut out,
        )
        .unwrap_err();
    assert_eq!(e.reason, "stream_error");
    assert!(!e.message.contains(KEY), "{}", e.message);
    let e = d
        .event(
            SseEvent {
                event: "error".into(),
                data: Bytes::from_static(br#"{"error":{"message":"boom"}}"#),
            },
            &mut out,
        )
        .unwrap_err();
    assert_eq!(e.message, "boom");
    let e = d.event(ev("<html>oops</html>"), &mut out).unwrap_err();
    assert_eq!(e.reason, "malformed");
    let e = d
        .event(ev(r#"{"choices":[{"finish_reason":"stop""#), &mut out)
        .unwrap_err();
    assert_eq!(e.reason, "malformed");
    assert_eq!(out, [data(ROLE)]);
}
