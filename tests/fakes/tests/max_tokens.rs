//! Output-token limits over real sockets: each dialect refuses a `max_tokens` the real API
//! refuses (above the model's output limit, of the wrong type, or given twice), with that API's
//! status and error body, and accepts what it accepts (values at the limit, unknown models).

mod common;

use serde_json::{Value, json};

use common::{fake, json, post, status};

const OPENAI_KEY: &str = "authorization: Bearer sk-test\r\n";
const ANTHROPIC_KEYS: &str = "x-api-key: sk-ant-test\r\nanthropic-version: 2023-06-01\r\n";
const GEMINI_KEY: &str = "x-goog-api-key: AIza-test\r\n";

fn chat(model: &str, extra: Value) -> String {
    let mut b = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b.to_string()
}

#[tokio::test]
async fn openai_refuses_max_tokens_above_the_models_output_limit() {
    let addr = fake().await;
    let r = post(
        addr,
        "/v1/chat/completions",
        OPENAI_KEY,
        &chat("gpt-4o-mini", json!({"max_tokens": 1_666_666_665u64})),
    )
    .await;
    assert_eq!(status(&r), 400, "{r}");
    assert_eq!(
        json(&r),
        json!({"error": {
            "message": "max_tokens is too large: 1666666665. This model supports at most 16384 completion tokens, whereas you provided 1666666665.",
            "type": "invalid_request_error", "param": "max_tokens", "code": null}})
    );

    let r = post(
        addr,
        "/v1/chat/completions",
        OPENAI_KEY,
        &chat(
            "gpt-4.1-2025-04-14",
            json!({"max_completion_tokens": 32_769}),
        ),
    )
    .await;
    assert_eq!(status(&r), 400, "{r}");
    assert_eq!(json(&r)["error"]["param"], "max_completion_tokens");
    assert!(
        json(&r)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("supports at most 32768 completion tokens"),
        "{r}"
    );

    // At the limit, and for a model the fake does not know, any value goes through.
    for (model, max) in [("gpt-4o", 16_384u64), ("my-vllm-model", 1_000_000)] {
        let r = post(
            addr,
            "/v1/chat/completions",
            OPENAI_KEY,
            &chat(model, json!({"max_tokens": max})),
        )
        .await;
        assert_eq!(status(&r), 200, "{model}: {r}");
    }
}

#[tokio::test]
async fn openai_refuses_both_limits_at_once_and_limits_that_are_not_integers() {
    let addr = fake().await;
    let r = post(
        addr,
        "/v1/chat/completions",
        OPENAI_KEY,
        &chat(
            "gpt-4o",
            json!({"max_tokens": 100, "max_completion_tokens": 100}),
        ),
    )
    .await;
    assert_eq!(status(&r), 400, "{r}");
    assert_eq!(
        json(&r)["error"],
        json!({"message": "Setting 'max_tokens' and 'max_completion_tokens' at the same time is not supported.",
               "type": "invalid_request_error", "param": "max_tokens",
               "code": "invalid_parameter_combination"})
    );

    for (value, got) in [
        (json!(100_000.0), "a decimal number"),
        (json!("100000"), "a string"),
    ] {
        // A model without a known limit: the type alone is refused.
        let r = post(
            addr,
            "/v1/chat/completions",
            OPENAI_KEY,
            &chat("my-vllm-model", json!({"max_tokens": value})),
        )
        .await;
        assert_eq!(status(&r), 400, "{r}");
        assert_eq!(
            json(&r)["error"],
            json!({"message": format!("Invalid type for 'max_tokens': expected an integer, but got {got} instead."),
                   "type": "invalid_request_error", "param": "max_tokens", "code": "invalid_type"})
        );
    }

    let r = post(
        addr,
        "/v1/chat/completions",
        OPENAI_KEY,
        &chat("gpt-4o", json!({"max_tokens": 0})),
    )
    .await;
    assert_eq!(status(&r), 400, "{r}");
    assert_eq!(json(&r)["error"]["code"], "integer_below_min_value");

    // `null` is the same as leaving it out.
    let r = post(
        addr,
        "/v1/chat/completions",
        OPENAI_KEY,
        &chat(
            "gpt-4o",
            json!({"max_tokens": null, "max_completion_tokens": 50}),
        ),
    )
    .await;
    assert_eq!(status(&r), 200, "{r}");
}

#[tokio::test]
async fn anthropic_requires_max_tokens_and_refuses_one_above_the_models_limit() {
    let addr = fake().await;
    let msg = |model: &str, max: Option<Value>| {
        let mut b = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
        if let Some(m) = max {
            b["max_tokens"] = m;
        }
        b.to_string()
    };
    let refused = |r: &str, message: &str| {
        assert_eq!(status(r), 400, "{r}");
        let v = json(r);
        assert_eq!(v["type"], "error");
        assert_eq!(
            v["error"],
            json!({"type": "invalid_request_error", "message": message})
        );
    };

    let r = post(
        addr,
        "/v1/messages",
        ANTHROPIC_KEYS,
        &msg("claude-sonnet-4-20250514", None),
    )
    .await;
    refused(&r, "max_tokens: Field required");

    let r = post(
        addr,
        "/v1/messages",
        ANTHROPIC_KEYS,
        &msg("claude-sonnet-4-20250514", Some(json!(64_001))),
    )
    .await;
    refused(
        &r,
        "max_tokens: 64001 > 64000, which is the maximum allowed number of output tokens for claude-sonnet-4-20250514",
    );

    let r = post(
        addr,
        "/v1/messages",
        ANTHROPIC_KEYS,
        &msg("claude-3-5-haiku-20241022", Some(json!(8_193))),
    )
    .await;
    refused(
        &r,
        "max_tokens: 8193 > 8192, which is the maximum allowed number of output tokens for claude-3-5-haiku-20241022",
    );

    let r = post(
        addr,
        "/v1/messages",
        ANTHROPIC_KEYS,
        &msg("claude-sonnet-4-20250514", Some(json!("100"))),
    )
    .await;
    refused(&r, "max_tokens: Input should be a valid integer");

    for (model, max) in [
        ("claude-opus-4-20250514", 32_000u64),
        ("some-future-claude", 1_000_000),
    ] {
        let r = post(
            addr,
            "/v1/messages",
            ANTHROPIC_KEYS,
            &msg(model, Some(json!(max))),
        )
        .await;
        assert_eq!(status(&r), 200, "{model}: {r}");
    }
}

#[tokio::test]
async fn gemini_refuses_max_output_tokens_above_the_models_limit() {
    let addr = fake().await;
    let req = |max: u64| {
        json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
               "generationConfig": {"maxOutputTokens": max}})
        .to_string()
    };
    let r = post(
        addr,
        "/v1beta/models/gemini-2.5-flash:generateContent",
        GEMINI_KEY,
        &req(65_537),
    )
    .await;
    assert_eq!(status(&r), 400, "{r}");
    assert_eq!(
        json(&r),
        json!({"error": {"code": 400, "status": "INVALID_ARGUMENT",
            "message": "Unable to submit request because it has a maxOutputTokens value of 65537 but the supported range is from 1 (inclusive) to 65537 (exclusive). Update the value and try again."}})
    );

    let r = post(
        addr,
        "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse",
        GEMINI_KEY,
        &req(8_193),
    )
    .await;
    assert_eq!(status(&r), 400, "{r}");
    assert_eq!(json(&r)["error"]["status"], "INVALID_ARGUMENT");

    for (model, max) in [
        ("gemini-2.5-pro", 65_536u64),
        ("gemini-exp-1206", 1_000_000),
    ] {
        let r = post(
            addr,
            &format!("/v1beta/models/{model}:generateContent"),
            GEMINI_KEY,
            &req(max),
        )
        .await;
        assert_eq!(status(&r), 200, "{model}: {r}");
    }
}
