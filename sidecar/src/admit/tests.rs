use std::sync::Arc;

use http::HeaderValue;
use llmesh_api::manifest::{self, LocalSecrets};
use serde_json::json;

use super::*;
use crate::accesslog::AccessLog;
use crate::account::Ledger;
use crate::budget::SystemClock;
use crate::ingress::{Context, responses};
use crate::internal::Endpoint;
use crate::limits::Buffers;
use crate::providers::mock::MockTransport;
use crate::runtime::{self, Carry};
use crate::transport::{Transport, TransportFactory};

/// Compiles one route (`spec` as YAML, backends `a` and `b` on the mock provider) with the
/// real compiler and makes it servable.
fn route(spec: &str) -> RouteState {
    route_of("", spec)
}

/// The same, with `weights` added to each backend's fields.
fn route_of(weights: &str, spec: &str) -> RouteState {
    let yaml = format!(
        "apiVersion: llmesh.io/v1alpha1\nkind: LLMRoute\nmetadata:\n  name: chat\nspec:\n  backends:\n  - {{name: a, provider: mock, model: m-a{weights}}}\n  - {{name: b, provider: mock, model: m-b{weights}}}\n{}",
        spec.lines().map(|l| format!("  {l}\n")).collect::<String>()
    );
    let manifests = manifest::parse("test.yaml", &yaml, false).unwrap();
    let secrets = LocalSecrets::new(&manifests, []);
    let (snapshot, _) = manifest::compile("test.yaml", &manifests, &secrets).unwrap();
    let transports: TransportFactory = Arc::new(|b| MockTransport::new(b) as Arc<dyn Transport>);
    let mut rt = runtime::build(
        &snapshot,
        &mut Carry::default(),
        &transports,
        &Metrics::new(),
        Instant::now(),
    );
    rt.routes.remove(0)
}

fn ticket() -> Ticket {
    let metrics = Arc::new(Metrics::new());
    let log = AccessLog::off(metrics.log_dropped.clone());
    let ledger = Arc::new(Ledger {
        metrics,
        log,
        clock: Arc::new(SystemClock),
        buffers: Arc::new(Buffers::new(0)),
        usage: None,
    });
    Ticket::new(
        ledger,
        "req-1".into(),
        Op::Chat,
        "/v1/chat/completions".into(),
    )
}

fn ingress(endpoint: Endpoint, body: &Value) -> (Bytes, Ingress) {
    let raw = Bytes::from(body.to_string());
    let store = responses::Store::default();
    let ctx = Context {
        responses: &store,
        request_id: "req-1",
    };
    let i = Ingress::read(endpoint, &raw, &HeaderMap::new(), &ctx).unwrap();
    (raw, i)
}

fn chat(extra: Value) -> Value {
    let mut body =
        json!({"model": "chat", "messages": [{"role": "user", "content": "hello there"}]});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body
}

fn admit_chat(route: &RouteState, body: &Value, t: &mut Ticket) -> Result<Admitted, ApiError> {
    let (raw, mut i) = ingress(Endpoint::Chat, body);
    admit(route, &raw, &HeaderMap::new(), &mut i, None, t)
}

fn rejections(t: &Ticket, limit: &str) -> u64 {
    t.ledger
        .metrics
        .limit_rejections
        .with_label_values(&["chat", limit])
        .get()
}

#[test]
fn a_plain_request_is_planned_without_reading_its_prompt() {
    let r = route("");
    let mut t = ticket();
    let body = chat(json!({"stream": true, "max_tokens": 5}));
    let a = admit_chat(&r, &body, &mut t).unwrap();
    assert_eq!(a.plan.order, vec![0, 1]);
    assert!(a.stream && t.stream && !a.client_wants_usage);
    assert!(!a.estimated, "nothing on this route reads the prompt");
    assert!(matches!(t.prompt_estimate, PromptEstimate::Later(_)));
    assert_eq!(
        a.limit,
        OutputLimit {
            max_tokens: Some(5),
            key: "max_tokens",
            chosen: false
        }
    );
    assert_eq!(
        t.variant.as_deref(),
        Some(r.backends[0].spec.variant.as_str())
    );
}

#[test]
fn the_max_tokens_policy_clamps_rejects_or_fills_in() {
    let limits = |policy: &str| {
        route(&format!(
            "limits: {{maxTokens: 100, defaultMaxTokens: 50, maxTokensPolicy: {policy}}}"
        ))
    };
    let mut t = ticket();
    let a = admit_chat(
        &limits("clamp"),
        &chat(json!({"max_completion_tokens": 500})),
        &mut t,
    )
    .unwrap();
    assert_eq!(
        a.limit,
        OutputLimit {
            max_tokens: Some(100),
            key: "max_completion_tokens",
            chosen: true
        }
    );

    let (raw, mut i) = ingress(Endpoint::Chat, &chat(json!({})));
    let a = admit(
        &limits("clamp"),
        &raw,
        &HeaderMap::new(),
        &mut i,
        None,
        &mut t,
    )
    .unwrap();
    assert_eq!(
        a.limit,
        OutputLimit {
            max_tokens: Some(50),
            key: "max_completion_tokens",
            chosen: true
        }
    );
    assert_eq!(
        i.body["max_completion_tokens"], 50,
        "the default is written into the body"
    );
    assert!(
        !i.verbatim,
        "a body llmesh changed is not sent as the client's bytes"
    );

    let e = admit_chat(&limits("reject"), &chat(json!({"max_tokens": 500})), &mut t).unwrap_err();
    assert_eq!(
        (e.status.as_u16(), e.code),
        (400, Some("max_tokens_exceeded"))
    );
    assert_eq!(rejections(&t, "max_tokens"), 1);

    let e = admit_chat(&limits("clamp"), &chat(json!({"max_tokens": 1.5})), &mut t).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("max_tokens"));
    assert_eq!(
        rejections(&t, "max_tokens"),
        1,
        "a malformed field is not a limit's refusal"
    );
}

#[test]
fn the_larger_of_both_output_fields_binds() {
    let body = chat(json!({"max_tokens": 10, "max_completion_tokens": 30}));
    let asked = max_tokens_asked(body.as_object().unwrap()).unwrap();
    assert_eq!(asked, Some((30, "max_completion_tokens")));
    let body = chat(json!({"max_tokens": "10"}));
    assert!(max_tokens_asked(body.as_object().unwrap()).is_err());
}

#[test]
fn stream_must_be_a_boolean_and_embeddings_never_stream() {
    let body = |v: Value| json!({"stream": v}).as_object().unwrap().clone();
    assert!(stream_asked(Op::Chat, &body(json!(true))).unwrap());
    assert!(!stream_asked(Op::Embedding, &body(json!(true))).unwrap());
    assert!(!stream_asked(Op::Chat, &body(Value::Null)).unwrap());
    assert_eq!(
        stream_asked(Op::Chat, &body(json!("true")))
            .unwrap_err()
            .param
            .as_deref(),
        Some("stream")
    );
}

#[test]
fn limits_refuse_and_count_by_name() {
    let r = route("limits: {maxRequestBytes: 1024, maxInputTokens: 5}");
    let mut t = ticket();
    let big = chat(json!({"padding": "x".repeat(2000)}));
    assert_eq!(
        admit_chat(&r, &big, &mut t).unwrap_err().status.as_u16(),
        413
    );
    assert_eq!(rejections(&t, "body_size"), 1);
    let long = json!({"model": "chat", "messages": [{"role": "user", "content": "one two three four five six seven eight nine ten"}]});
    let e = admit_chat(&r, &long, &mut t).unwrap_err();
    assert_eq!(
        (e.code, e.param.as_deref()),
        (Some("input_tokens_exceeded"), Some("messages"))
    );
    assert_eq!(rejections(&t, "input_tokens"), 1);
    let e = admit_chat(&r, &json!({"model": "chat", "messages": []}), &mut t).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("messages"));
}

#[test]
fn rate_limits_take_requests_then_tokens() {
    let r = route("limits: {requestsPerMinute: 1, tokensPerMinute: 1000}");
    let now = Instant::now();
    assert_eq!(
        rate_limits(&r, 40, now).unwrap(),
        40,
        "the prompt's tokens are reserved"
    );
    let e = rate_limits(&r, 40, now).unwrap_err();
    assert_eq!((e.status.as_u16(), e.reason), (429, "rpm"));
    assert!(e.retry_after.is_some());

    let r = route("limits: {tokensPerMinute: 1000}");
    assert_eq!(rate_limits(&r, 995, now).unwrap(), 995);
    assert_eq!(rate_limits(&r, 900, now).unwrap_err().reason, "tpm");
    let mut t = ticket();
    let e = admit_chat(&r, &chat(json!({})), &mut t).unwrap_err();
    assert_eq!(e.reason, "tpm");
    assert_eq!(rejections(&t, "tpm"), 1);
    assert_eq!(
        rate_limits(&route(""), 900, now).unwrap(),
        0,
        "no bucket, nothing reserved"
    );
}

#[test]
fn a_request_only_a_native_backend_can_serve_is_refused_on_a_route_without_one() {
    let r = route("");
    let mut t = ticket();
    let body = json!({"model": "chat", "input": "x",
        "tools": [{"type": "file_search", "vector_store_ids": ["vs"]}]});
    let (raw, mut i) = ingress(Endpoint::Responses, &body);
    let e = admit(&r, &raw, &HeaderMap::new(), &mut i, None, &mut t).unwrap_err();
    assert!(
        e.message
            .contains("has no backend that speaks the Responses API natively"),
        "{}",
        e.message
    );
}

#[test]
fn the_user_header_comes_before_the_body_field_for_sticky_splits() {
    let r = route_of(", weight: 50", "");
    let all = [0, 1];
    let alice = choose::weighted(&r, &all, Some("alice"));
    let other = ["bob", "carol", "dave", "erin", "frank", "grace"]
        .into_iter()
        .find(|u| choose::weighted(&r, &all, Some(u)) != alice)
        .unwrap();
    let first = |h: &HeaderMap, b: &Value| {
        let (raw, mut i) = ingress(Endpoint::Chat, b);
        admit(&r, &raw, h, &mut i, None, &mut ticket())
            .unwrap()
            .plan
            .order[0]
    };
    let body = chat(json!({ "user": other }));
    let mut headers = HeaderMap::new();
    assert_ne!(
        first(&headers, &body),
        alice,
        "the body's `user` keys the split"
    );
    headers.insert("x-llmesh-user", HeaderValue::from_static("alice"));
    assert_eq!(first(&headers, &body), alice, "the header wins over `user`");
}
