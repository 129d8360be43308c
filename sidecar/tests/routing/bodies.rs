//! Bodies.

use super::*;

#[tokio::test(start_paused = true)]
async fn the_clients_body_reaches_the_provider_as_written_but_for_the_model() {
    let (app, up) = app(&route(
        "chat",
        r#"
        backends:
          - {name: a, provider: openai, model: gpt-4o-2024-08-06, secretRef: {name: openai, key: api-key}}
        "#,
    ));
    up.always("a", Reply::ok("a", 5, 1));
    // Number forms and an integer past 2^64 a parse-and-serialise would rewrite, escapes, spaces.
    let sent = "{ \"model\" : \"chat\", \"temperature\": 1.0e0, \"seed\": 123456789012345678901234567890,\n  \"messages\": [{\"role\": \"user\", \"content\": \"caf\\u00e9 \\\"model\\\"\"}], \"metadata\": {\"model\": \"kept\"} }";
    let r = post(json!({})).raw(sent).send(&app).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let expected = sent.replacen("\"chat\"", "\"gpt-4o-2024-08-06\"", 1);
    assert_eq!(std::str::from_utf8(&up.seen("a")[0].raw).unwrap(), expected);

    // A stream gets the usage option appended, the rest as sent.
    up.always("a", Reply::stream(&["Hi"], Some((5, 1))));
    let sent = "{\"model\":\"chat\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
    post(json!({})).raw(sent).send(&app).await;
    assert_eq!(
        std::str::from_utf8(&up.seen("a")[1].raw).unwrap(),
        "{\"model\":\"gpt-4o-2024-08-06\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stream_options\":{\"include_usage\":true}}"
    );

    // A member named twice is sent as the sidecar read it (the last one), never both.
    up.always("a", Reply::ok("a", 5, 1));
    let sent = "{\"model\":\"chat\",\"max_tokens\":100000,\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
    post(json!({})).raw(sent).send(&app).await;
    assert_eq!(
        std::str::from_utf8(&up.seen("a")[2].raw).unwrap(),
        "{\"model\":\"gpt-4o-2024-08-06\",\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}"
    );
}
