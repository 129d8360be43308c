//! Metrics dashboards can rely on: OpenTelemetry GenAI labels beside llmesh's own, cost in USD,
//! process metrics, series that leave with the routes and backends a reload removes, the served
//! snapshot's age and staleness, and labels that stay bounded whatever clients send.

mod common;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use common::*;
use llmesh_sidecar::app::App;

const KEYREF: &str = "secretRef: {name: openai, key: api-key}";

fn chat_route(model: &str) -> String {
    route(
        "chat",
        &format!(
            r#"
            backends:
              - {{name: a, provider: openai, model: {model}, {KEYREF}, prices: {{input: "1.00", output: "2.00"}}}}
            "#
        ),
    )
}

/// Every sample line of the exposition (no comments).
fn samples(app: &App) -> Vec<String> {
    app.refresh_gauges();
    String::from_utf8(app.metrics.render())
        .expect("utf-8 metrics")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// Sample lines of metric `name` (its histogram's `_bucket`, `_sum`, `_count` included).
fn lines_of(app: &App, name: &str) -> Vec<String> {
    samples(app)
        .into_iter()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name}_")))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_served_request_carries_the_gen_ai_labels_and_its_cost_in_usd() {
    let yaml = format!(
        "{}\n---\n{}",
        chat_route("gpt-4o-2024-08-06"),
        route(
            "down",
            &format!(
                "backends:\n  - {{name: d, provider: gemini, model: gemini-2.5-flash, {KEYREF}}}\n"
            ),
        )
    );
    let (app, up) = app(&yaml);
    up.always("a", Reply::ok("hi", 1_000, 500));
    let r = post(chat_body("chat", "Say hello")).send(&app).await;
    assert_eq!(r.status, 200);

    let ok = [
        ("route", "chat"),
        ("backend", "a"),
        ("variant", ""),
        ("status_class", "2xx"),
        ("gen_ai_operation_name", "chat"),
        ("gen_ai_provider_name", "openai"),
        ("gen_ai_request_model", "chat"),
        ("gen_ai_response_model", "gpt-4o-2024-08-06"),
    ];
    let ok: Vec<(&str, &str)> = ok.into_iter().filter(|(_, v)| !v.is_empty()).collect();
    assert_eq!(metric(&app, "llmesh_requests_total", &ok), 1.0);
    assert_eq!(
        metric(&app, "gen_ai_server_request_duration_seconds_count", &ok),
        1.0
    );
    // A success has no error type.
    let line = lines_of(&app, "llmesh_requests_total")
        .into_iter()
        .find(|l| l.contains("route=\"chat\""))
        .unwrap();
    assert!(
        !line.contains("error_type=\"") || line.contains("error_type=\"\""),
        "{line}"
    );
    // llmesh's own `provider` and `model` labels gave way to the GenAI ones.
    for l in samples(&app) {
        assert!(
            !l.contains("{provider=") && !l.contains(",provider=") && !l.contains(",model="),
            "{l}"
        );
    }

    // $1 per million input tokens, $2 per million output: 1,000 and 500 tokens cost $0.002.
    let micro = metric(&app, "llmesh_cost_microdollars_total", &[("route", "chat")]);
    assert_eq!(micro, 2_000.0);
    let usd = metric(
        &app,
        "llmesh_cost_usd_total",
        &[("route", "chat"), ("gen_ai_operation_name", "chat")],
    );
    assert!((usd - 0.002).abs() < 1e-12, "{usd}");

    // A failure names its error type, and Gemini has OpenTelemetry's provider name.
    up.always("d", Reply::error(500, "boom", "the provider broke"));
    let r = post(chat_body("down", "Say hello")).send(&app).await;
    assert!(r.status.is_server_error(), "{}", r.text());
    let failed = lines_of(&app, "llmesh_requests_total")
        .into_iter()
        .find(|l| l.contains("route=\"down\""))
        .expect("the failure is counted");
    assert!(
        failed.contains("gen_ai_provider_name=\"gcp.gemini\""),
        "{failed}"
    );
    assert!(failed.contains("gen_ai_request_model=\"down\""), "{failed}");
    let error_type = failed
        .split("error_type=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_default();
    assert!(!error_type.is_empty(), "{failed}");
}

#[tokio::test(start_paused = true)]
async fn a_stream_records_its_time_per_output_token() {
    let (app, up) = app(&chat_route("gpt-4o-2024-08-06"));
    // The first chunk at once, then 4 more output tokens over 2 s: 0.5 s per token.
    up.push(
        "a",
        Reply::sse(vec![
            Part::Data(role_chunk()),
            Part::Data(content_chunk("one")),
            Part::Wait(Duration::from_secs(2)),
            Part::Data(content_chunk(" two three four five")),
            Part::Data(finish_chunk()),
            Part::Data(usage_chunk(10, 5)),
            Part::Data("data: [DONE]\n\n".into()),
        ]),
    );
    let mut body = chat_body("chat", "Count");
    body["stream"] = json!(true);
    let r = post(body).send(&app).await;
    assert_eq!(r.status, 200);
    let labels = [("route", "chat"), ("gen_ai_operation_name", "chat")];
    assert_eq!(
        metric(
            &app,
            "gen_ai_server_time_per_output_token_seconds_count",
            &labels
        ),
        1.0
    );
    let per_token = metric(
        &app,
        "gen_ai_server_time_per_output_token_seconds_sum",
        &labels,
    );
    assert!((0.45..=0.55).contains(&per_token), "{per_token}");
}

#[tokio::test(start_paused = true)]
async fn series_of_routes_backends_and_budgets_a_reload_removed_are_gone() {
    let before = format!(
        "{}\n---\n{}\n---\n{}",
        route(
            "chat",
            &format!(
                "allowModelPinning: true\nbackends:\n  - {{name: a, provider: openai, model: gpt-4o-2024-08-06, {KEYREF}, weight: 100}}\n  - {{name: b, provider: openai, model: gpt-4o-mini-2024-07-18, {KEYREF}, weight: 0}}\n"
            )
        ),
        route(
            "old",
            &format!(
                "backends:\n  - {{name: c, provider: openai, model: gpt-4o-2024-08-06, {KEYREF}}}\n"
            )
        ),
        "apiVersion: llmesh.io/v1alpha1\nkind: LLMBudget\nmetadata: {name: team}\nspec:\n  limit: {usd: \"10\"}\n"
    );
    let (app, up) = app(&before);
    up.always("a", Reply::ok("a", 5, 1))
        .always("b", Reply::ok("b", 5, 1))
        .always("c", Reply::ok("c", 5, 1));
    for model in ["chat", "old", "openai/gpt-4o-mini-2024-07-18"] {
        let r = post(chat_body(model, "hi")).send(&app).await;
        assert_eq!(r.status, 200, "{model}: {}", r.text());
    }
    let all = samples(&app);
    assert!(all.iter().any(|l| l.contains("route=\"old\"")));
    assert!(all.iter().any(|l| l.contains("backend=\"b\"")));
    assert!(all.iter().any(|l| l.contains("budget=\"team\"")));

    // Route `old`, backend `b` and the budget are deleted; backend `a` changes its model.
    let after = route(
        "chat",
        &format!(
            "backends:\n  - {{name: a, provider: openai, model: gpt-4.1-mini-2025-04-14, {KEYREF}}}\n"
        ),
    );
    app.apply(&snapshot(&after));
    for l in samples(&app) {
        assert!(
            !l.contains("route=\"old\"")
                && !l.contains("backend=\"b\"")
                && !l.contains("budget=\"team\"")
                && !l.contains("gpt-4o-2024-08-06"),
            "a series of what the reload removed: {l}"
        );
    }
    // What remains counts on: the changed backend under its new model.
    let r = post(chat_body("chat", "hi")).send(&app).await;
    assert_eq!(r.status, 200);
    let a = [
        ("route", "chat"),
        ("backend", "a"),
        ("gen_ai_response_model", "gpt-4.1-mini-2025-04-14"),
    ];
    assert_eq!(metric(&app, "llmesh_requests_total", &a), 1.0);
    assert_eq!(metric(&app, "llmesh_backend_up", &[("backend", "a")]), 1.0);
}

#[tokio::test(start_paused = true)]
async fn a_reload_that_keeps_everything_keeps_every_series() {
    let yaml = chat_route("gpt-4o-2024-08-06");
    let (app, up) = app(&yaml);
    up.always("a", Reply::ok("a", 5, 1));
    for _ in 0..3 {
        post(chat_body("chat", "hi")).send(&app).await;
    }
    let before = samples(&app).len();
    app.apply(&snapshot(&yaml));
    post(chat_body("chat", "hi")).send(&app).await;
    assert_eq!(samples(&app).len(), before);
    assert_eq!(
        metric(&app, "llmesh_requests_total", &[("backend", "a")]),
        4.0,
        "the cached handles still count into exported series"
    );
}

#[tokio::test(start_paused = true)]
async fn the_snapshot_age_and_staleness_are_gauges() {
    let clock = ManualClock::at(1_800_000_000);
    let (app, _up) = app_with_clock(&chat_route("gpt-4o-2024-08-06"), Some(clock.clone()));
    let gauge = |app: &Arc<App>, name: &str| {
        app.refresh_gauges();
        metric(app, name, &[])
    };
    assert_eq!(gauge(&app, "llmesh_config_age_seconds"), 0.0);
    assert_eq!(gauge(&app, "llmesh_config_stale"), 0.0);

    clock.set(1_800_000_090);
    assert_eq!(gauge(&app, "llmesh_config_age_seconds"), 90.0);
    // The operator stops answering: stale until it answers again.
    app.source_away();
    assert_eq!(gauge(&app, "llmesh_config_stale"), 1.0);
    app.confirmed_at(1_800_000_090);
    assert_eq!(gauge(&app, "llmesh_config_stale"), 0.0);
    assert_eq!(gauge(&app, "llmesh_config_age_seconds"), 0.0);
    // Served from disk at start, before the operator confirmed it.
    app.set_stale(true);
    assert_eq!(gauge(&app, "llmesh_config_stale"), 1.0);
    // A new config resets the age.
    clock.set(1_800_000_500);
    app.set_stale(false);
    app.apply(&snapshot(&chat_route("gpt-4o-mini-2024-07-18")));
    assert_eq!(gauge(&app, "llmesh_config_age_seconds"), 0.0);
}

#[tokio::test]
async fn a_snapshot_served_from_disk_is_stale_and_as_old_as_its_file() {
    use llmesh_sidecar::operator_client::{OperatorSource, start_from_disk};
    let dir = std::env::temp_dir().join(format!("llmesh-metrics-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("snapshot.json");
    let snap = snapshot(&chat_route("gpt-4o-2024-08-06"));
    std::fs::write(&path, serde_json::to_vec(&snap).unwrap()).unwrap();
    let written = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(written)
        .unwrap();
    let clock = ManualClock::at(1_800_000_600);
    let app = App::builder().clock(clock).build();
    let source = OperatorSource {
        url: "https://127.0.0.1:1".into(),
        ca_pem: String::new(),
        token_file: dir.join("token"),
        cache_path: path,
    };
    assert!(start_from_disk(&app, &source).is_some());
    app.refresh_gauges();
    assert_eq!(metric(&app, "llmesh_config_stale", &[]), 1.0);
    assert_eq!(metric(&app, "llmesh_config_age_seconds", &[]), 600.0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(start_paused = true)]
async fn labels_stay_bounded_whatever_clients_send() {
    let (app, up) = app(&chat_route("gpt-4o-2024-08-06"));
    up.always("a", Reply::ok("hi", 5, 1));
    let send = |i: usize| {
        let app = app.clone();
        async move {
            // A distinct user, prompt and request id to a known route...
            let mut body = chat_body("chat", &format!("prompt-{i}"));
            body["user"] = json!(format!("user-{i}"));
            let r = post(body)
                .header("x-request-id", &format!("req-{i}"))
                .header("x-llmesh-user", &format!("hdr-user-{i}"))
                .send(&app)
                .await;
            assert_eq!(r.status, 200);
            // ... and a model nobody configured.
            let r = post(chat_body(&format!("unknown-model-{i}"), "x"))
                .header("x-request-id", &format!("req-unknown-{i}"))
                .send(&app)
                .await;
            assert_eq!(r.status, 404);
        }
    };
    send(0).await;
    let first = samples(&app).len();
    for i in 1..2_000 {
        send(i).await;
    }
    let all = samples(&app);
    assert_eq!(
        all.len(),
        first,
        "4,000 distinct users, prompts, request ids and models made new series"
    );
    for l in &all {
        assert!(
            !l.contains("user-") && !l.contains("prompt-") && !l.contains("req-"),
            "{l}"
        );
        assert!(!l.contains("unknown-model"), "{l}");
    }
    assert_eq!(
        metric(&app, "llmesh_requests_total", &[("status_class", "2xx")]),
        2_000.0
    );
    assert_eq!(
        metric(&app, "llmesh_requests_total", &[("status_class", "4xx")]),
        2_000.0
    );
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn process_metrics_are_exported() {
    let (app, _up) = app(&chat_route("gpt-4o-2024-08-06"));
    assert!(metric(&app, "process_resident_memory_bytes", &[]) > 0.0);
    assert!(metric(&app, "process_open_fds", &[]) > 0.0);
    assert!(
        samples(&app)
            .iter()
            .any(|l| l.starts_with("process_cpu_seconds_total "))
    );
}
