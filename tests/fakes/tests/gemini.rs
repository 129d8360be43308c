//! The Gemini dialect over real sockets: the key, generateContent, SSE and JSON-array streams,
//! function calls with thought signatures, schema refusals, safety blocks and Google's errors.

mod common;

use serde_json::{Value, json};

use common::{body, fake, header, json, post, status};

const KEY: &str = "x-goog-api-key: AIza-test\r\n";
const FLASH: &str = "/v1beta/models/gemini-2.5-flash";

fn req(extra: Value) -> String {
    let mut b = json!({"contents": [{"role": "user", "parts": [{"text": "hello gemini"}]}]});
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b.to_string()
}

/// The `data:` events of an SSE stream; Gemini separates them with CRLF pairs.
fn sse(resp: &str) -> Vec<Value> {
    let b = body(resp);
    assert!(b.ends_with("\r\n\r\n"), "{b:?}");
    b.split("\r\n\r\n")
        .filter(|e| !e.is_empty())
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
        .collect()
}

fn weather() -> Value {
    json!([{"functionDeclarations": [{"name": "get_weather", "description": "Weather",
        "parameters": {"type": "OBJECT", "properties": {"city": {"type": "STRING"},
                       "days": {"type": "INTEGER", "minimum": 2}}, "required": ["city"]}}]}])
}

#[tokio::test]
async fn generate_content_needs_a_key() {
    let addr = fake().await;
    let path = format!("{FLASH}:generateContent");
    let r = post(addr, &path, "", &req(json!({}))).await;
    assert_eq!(status(&r), 403);
    assert_eq!(json(&r)["error"]["status"], "PERMISSION_DENIED");
    let r = post(addr, &format!("{path}?key=AIza-q"), "", &req(json!({}))).await;
    assert_eq!(status(&r), 200);

    let r = post(addr, &format!("/s/ok{path}"), KEY, &req(json!({}))).await;
    let v = json(&r);
    let c = &v["candidates"][0];
    assert_eq!(
        c["content"],
        json!({"parts": [{"text": "Hello from the fake provider. You said: hello gemini"}], "role": "model"})
    );
    assert_eq!(c["finishReason"], "STOP");
    assert_eq!(v["modelVersion"], "gemini-2.5-flash");
    assert!(v["responseId"].as_str().is_some_and(|s| !s.is_empty()));
    let u = &v["usageMetadata"];
    assert_eq!(u["candidatesTokenCount"], 9);
    assert_eq!(
        u["totalTokenCount"].as_u64(),
        Some(u["promptTokenCount"].as_u64().unwrap() + 9)
    );
}

#[tokio::test]
async fn streams_come_as_sse_or_as_a_json_array() {
    let addr = fake().await;
    let r = post(
        addr,
        &format!("{FLASH}:streamGenerateContent?alt=sse"),
        KEY,
        &req(json!({})),
    )
    .await;
    assert_eq!(
        header(&r, "content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    let ev = sse(&r);
    assert_eq!(ev.len(), 3); // nine words, three per event
    let text: String = ev
        .iter()
        .map(|e| {
            e["candidates"][0]["content"]["parts"][0]["text"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(text, "Hello from the fake provider. You said: hello gemini");
    assert!(
        ev[..2]
            .iter()
            .all(|e| e["candidates"][0].get("finishReason").is_none())
    );
    assert_eq!(ev[2]["candidates"][0]["finishReason"], "STOP");
    assert!(ev[0]["usageMetadata"].get("candidatesTokenCount").is_none());
    assert_eq!(ev[2]["usageMetadata"]["candidatesTokenCount"], 9);

    let r = post(
        addr,
        &format!("{FLASH}:streamGenerateContent"),
        KEY,
        &req(json!({})),
    )
    .await;
    let without_id = |mut v: Vec<Value>| {
        v.iter_mut().for_each(|e| {
            e.as_object_mut().unwrap().remove("responseId");
        });
        v
    };
    let arr: Vec<Value> = serde_json::from_str(&body(&r)).unwrap();
    assert_eq!(
        without_id(arr),
        without_id(ev),
        "the same events, as one JSON array"
    );
}

#[tokio::test]
async fn function_calls_carry_thought_signatures_on_gemini_3() {
    let addr = fake().await;
    let r = post(
        addr,
        &format!("{FLASH}:generateContent"),
        KEY,
        &req(json!({"tools": weather()})),
    )
    .await;
    let part = &json(&r)["candidates"][0]["content"]["parts"][0];
    assert_eq!(
        part,
        &json!({"functionCall": {"name": "get_weather", "args": {"city": "fake", "days": 2}}})
    );

    let g3 = "/v1beta/models/gemini-3-pro-preview:generateContent";
    let r = post(addr, g3, KEY, &req(json!({"tools": weather()}))).await;
    let call = json(&r)["candidates"][0]["content"]["parts"][0].clone();
    assert!(call["thoughtSignature"].is_string());
    let history = |call: Value| {
        req(json!({"tools": weather(), "contents": [
            {"role": "user", "parts": [{"text": "weather?"}]},
            {"role": "model", "parts": [call]},
            {"role": "user", "parts": [{"functionResponse": {"name": "get_weather",
                                         "response": {"result": "12C and rain"}}}]}]}))
    };
    let r = post(addr, g3, KEY, &history(call.clone())).await;
    assert_eq!(
        json(&r)["candidates"][0]["content"]["parts"][0]["text"],
        "The tool returned: 12C and rain"
    );
    let mut unsigned = call;
    unsigned.as_object_mut().unwrap().remove("thoughtSignature");
    let r = post(addr, g3, KEY, &history(unsigned)).await;
    assert_eq!(status(&r), 400);
    assert!(
        json(&r)["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Function call is missing a thought_signature")
    );
}

#[tokio::test]
async fn requests_the_real_api_refuses_are_refused() {
    let addr = fake().await;
    let path = format!("{FLASH}:generateContent");
    let mut bad_schema = weather();
    bad_schema[0]["functionDeclarations"][0]["parameters"]["additionalProperties"] = json!(false);
    for (body, says) in [
        (
            req(json!({"tools": bad_schema})),
            "Unknown name \"additionalProperties\"",
        ),
        (
            req(json!({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]})),
            "valid role",
        ),
        (req(json!({"contents": []})), "contents is not specified"),
        (
            req(json!({"contents": [{"role": "user", "parts": [
                {"functionResponse": {"name": "f", "response": {}}}]}]})),
            "function response turn comes immediately after a function call turn",
        ),
        (
            req(
                json!({"generationConfig": {"responseMimeType": "application/json",
                "responseSchema": {"type": "OBJECT", "$schema": "x"}}}),
            ),
            "Unknown name \"$schema\"",
        ),
    ] {
        let r = post(addr, &path, KEY, &body).await;
        assert_eq!(status(&r), 400, "{body}");
        let e = &json(&r)["error"];
        assert_eq!(
            (e["code"].clone(), e["status"].clone()),
            (json!(400), json!("INVALID_ARGUMENT"))
        );
        assert!(e["message"].as_str().unwrap().contains(says), "{e}");
    }
}

#[tokio::test]
async fn generation_config_is_honoured() {
    let addr = fake().await;
    let path = format!("{FLASH}:generateContent");
    let v = json(
        &post(
            addr,
            &path,
            KEY,
            &req(json!({"generationConfig": {"candidateCount": 2, "maxOutputTokens": 3}})),
        )
        .await,
    );
    let c = v["candidates"].as_array().unwrap();
    assert_eq!(c.len(), 2);
    assert_eq!(c[1]["index"], 1);
    assert_eq!(c[0]["content"]["parts"][0]["text"], "Hello from the");
    assert_eq!(c[0]["finishReason"], "MAX_TOKENS");
    let v = json(
        &post(
            addr,
            &path,
            KEY,
            &req(
                json!({"generationConfig": {"responseMimeType": "application/json",
                "responseSchema": {"type": "OBJECT", "properties": {"n": {"type": "NUMBER"},
                                   "tags": {"type": "ARRAY", "items": {"type": "STRING"}}}}}}),
            ),
        )
        .await,
    );
    let text = v["candidates"][0]["content"]["parts"][0]["text"]
        .as_str()
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(text).unwrap(),
        json!({"n": 1.5, "tags": ["fake"]})
    );
    let r = post(
        addr,
        "/v1beta/models/gemini-2.5-flash:countTokens",
        KEY,
        &req(json!({})),
    )
    .await;
    assert!(json(&r)["totalTokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn failures_speak_googles_error_format() {
    let addr = fake().await;
    let fail = |scenario: &'static str, stream: bool| async move {
        let verb = if stream {
            "streamGenerateContent?alt=sse"
        } else {
            "generateContent"
        };
        post(
            addr,
            &format!("/s/{scenario}{FLASH}:{verb}"),
            KEY,
            &req(json!({})),
        )
        .await
    };
    let r = fail("429,retry-after=7s", false).await;
    assert_eq!(status(&r), 429);
    let e = &json(&r)["error"];
    assert_eq!(e["status"], "RESOURCE_EXHAUSTED");
    let retry = e["details"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["@type"] == "type.googleapis.com/google.rpc.RetryInfo")
        .unwrap();
    assert_eq!(retry["retryDelay"], "7s");
    assert_eq!(
        header(&r, "retry-after"),
        None,
        "Google sends the delay in the body only"
    );

    let r = fail("503", false).await;
    assert_eq!(
        (status(&r), json(&r)["error"]["status"].clone()),
        (503, json!("UNAVAILABLE"))
    );
    let r = fail("401", false).await;
    assert_eq!(status(&r), 400);
    assert_eq!(json(&r)["error"]["details"][0]["reason"], "API_KEY_INVALID");
    let r = fail("context-length", false).await;
    assert!(
        json(&r)["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("The input token count (1048577) exceeds the maximum")
    );
    let r = fail("502", false).await;
    assert_eq!(header(&r, "content-type"), Some("text/html; charset=UTF-8"));

    let r = fail("safety", false).await;
    assert_eq!(status(&r), 200);
    let v = json(&r);
    assert_eq!(v["promptFeedback"]["blockReason"], "SAFETY");
    assert!(v.get("candidates").is_none());
    let ev = sse(&fail("safety,block=answer", true).await);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0]["candidates"][0]["finishReason"], "SAFETY");
    assert!(ev[0]["candidates"][0].get("content").is_none());

    let r = fail("malformed-json", true).await;
    let b = body(&r);
    assert!(b.starts_with("data: {") && serde_json::from_str::<Value>(&b[6..]).is_err());
    let r = fail("fast", true).await;
    assert_eq!(sse(&r).len(), 2);
}
