//! What the hostile upstream answers: every way a provider (or something posing as one) could
//! hand the key it was sent back to the sidecar. Each scenario builds its answer for one wire
//! format and one key; `None` means the scenario has nothing to say in that format.

use serde_json::{Value, json};

/// The wire format the upstream answers in, fixed by provider and endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fam {
    /// Chat/text completions and embeddings (OpenAI, Azure, OpenRouter, OpenAI-compatible).
    OpenAi,
    /// OpenAI's Responses API, spoken natively by `provider: openai` on `/v1/responses`.
    Responses,
    /// Anthropic's Messages API (native on `/v1/messages`, translated otherwise).
    Anthropic,
    /// Gemini's `generateContent` / `streamGenerateContent`.
    Gemini,
}

/// Which client requests a scenario applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// An error before any body: plain and streaming requests alike.
    Any,
    /// Only `stream: true` requests.
    Stream,
    /// Only plain requests.
    Plain,
}

/// One upstream answer, written byte for byte.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn raw(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            reason: reason(status).into(),
            headers: vec![("content-type".into(), content_type.into())],
            body: body.into(),
        }
    }

    pub fn json(status: u16, v: Value) -> Self {
        Self::raw(status, "application/json", v.to_string())
    }

    fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    fn reason_phrase(mut self, r: &str) -> Self {
        self.reason = r.into();
        self
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        302 => "Found",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

type Build = Box<dyn Fn(Fam, &str) -> Option<Reply> + Send + Sync>;

/// A named upstream behaviour.
pub struct Scenario {
    pub name: String,
    pub want: Want,
    build: Build,
}

impl Scenario {
    fn new(
        name: impl Into<String>,
        want: Want,
        build: impl Fn(Fam, &str) -> Option<Reply> + Send + Sync + 'static,
    ) -> Self {
        Self {
            name: name.into(),
            want,
            build: Box::new(build),
        }
    }

    /// The answer in `fam` carrying `key`.
    pub fn reply(&self, fam: Fam, key: &str) -> Option<Reply> {
        (self.build)(fam, key)
    }
}

/// `key` with its first, middle and last characters written as JSON `\u00XX` escapes: the
/// same string to any JSON reader, different bytes to a search.
pub fn escaped(key: &str) -> String {
    let n = key.chars().count();
    key.chars()
        .enumerate()
        .map(|(i, c)| {
            if i == 0 || i == n / 2 || i == n - 1 {
                format!("\\u{:04x}", c as u32)
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// `total` bytes of `prefix`, filler, `key` starting at byte `at`, filler and `suffix`. The byte
/// before the key is a letter, so a cut-off `sk-...` is not a whole token to a pattern redactor.
fn around(prefix: &str, key: &str, at: usize, suffix: &str, total: usize) -> Vec<u8> {
    assert!(at > prefix.len() && at + key.len() + suffix.len() <= total);
    let mut s = String::with_capacity(total);
    s.push_str(prefix);
    while s.len() < at {
        s.push('x');
    }
    s.push_str(key);
    while s.len() < total - suffix.len() {
        s.push('x');
    }
    s.push_str(suffix);
    s.into_bytes()
}

/// Headers a hostile upstream might echo the credential in.
fn echo_headers(r: Reply, key: &str) -> Reply {
    r.header("x-echo-authorization", &format!("Bearer {key}"))
        .header(
            "www-authenticate",
            &format!("Bearer error=\"invalid_token\", key=\"{key}\""),
        )
        .header("set-cookie", &format!("session={key}; Path=/"))
        .header("retry-after", key)
        .header("location", &format!("http://127.0.0.1:9/?key={key}"))
}

fn clean_openai_error() -> Value {
    json!({"error": {"message": "Invalid value.", "type": "invalid_request_error", "param": null, "code": null}})
}

/// A JSON error body, named by where the key sits.
type Shape = (&'static str, fn(&str) -> Vec<u8>);

/// The JSON error bodies, by where the key sits. Every format gets every shape: the sidecar
/// does not choose what an upstream sends.
fn json_shapes() -> [Shape; 18] {
    [
        ("openai.message", |k| {
            json!({"error": {"message": format!("Incorrect API key provided: {k}. You can find your API key at https://platform.openai.com/account/api-keys."), "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}).to_string().into_bytes()
        }),
        ("openai.param", |k| {
            json!({"error": {"message": "Invalid value.", "type": "invalid_request_error", "param": k, "code": null}}).to_string().into_bytes()
        }),
        ("openai.code", |k| {
            json!({"error": {"message": "Invalid value.", "type": "invalid_request_error", "param": null, "code": k}}).to_string().into_bytes()
        }),
        ("openai.type", |k| {
            json!({"error": {"message": "Invalid value.", "type": k, "param": null, "code": null}})
                .to_string()
                .into_bytes()
        }),
        ("openai.nested", |k| {
            json!({"error": {"message": "Invalid value.", "type": "invalid_request_error", "param": null, "code": null, "details": {"request": {"headers": {"authorization": format!("Bearer {k}")}}}}}).to_string().into_bytes()
        }),
        ("openai.top_level", |k| {
            let mut v = clean_openai_error();
            v["api_key"] = json!(k);
            v.to_string().into_bytes()
        }),
        ("openai.escaped_param", |k| {
            format!(r#"{{"error":{{"message":"Invalid value.","type":"invalid_request_error","param":"{}","code":null}}}}"#, escaped(k)).into_bytes()
        }),
        ("openai.escaped_message", |k| {
            format!(r#"{{"error":{{"message":"Incorrect API key provided: {}.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}}}"#, escaped(k)).into_bytes()
        }),
        ("anthropic.type", |k| {
            json!({"type": "error", "error": {"type": k, "message": "Invalid request."}})
                .to_string()
                .into_bytes()
        }),
        ("anthropic.message", |k| {
            json!({"type": "error", "error": {"type": "invalid_request_error", "message": format!("x-api-key {k} is invalid")}, "request_id": "req_011"}).to_string().into_bytes()
        }),
        ("anthropic.extra", |k| {
            json!({"type": "error", "error": {"type": "invalid_request_error", "message": "Invalid request.", "details": {"error_code": k}}, "request_id": k}).to_string().into_bytes()
        }),
        ("gemini.status", |k| {
            json!({"error": {"code": 400, "message": "API key not valid.", "status": k}})
                .to_string()
                .into_bytes()
        }),
        ("gemini.details", |k| {
            json!({"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.", "status": "INVALID_ARGUMENT", "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com", "key": k}}]}}).to_string().into_bytes()
        }),
        ("gemini.message", |k| {
            json!({"error": {"code": 400, "message": format!("API key {k} not valid."), "status": "INVALID_ARGUMENT"}}).to_string().into_bytes()
        }),
        ("gemini.array", |k| {
            json!([{"error": {"code": 400, "message": "API key not valid.", "status": k}}])
                .to_string()
                .into_bytes()
        }),
        ("every_field", |k| {
            json!({"type": "error", "error": {"message": k, "type": k, "param": k, "code": k, "status": k}}).to_string().into_bytes()
        }),
        ("message_1000", |k| {
            // The key straddles byte 1,000 of the message, where long messages are cut.
            let mut msg = "y".repeat(1_000 - 12);
            msg.push_str(k);
            json!({"error": {"message": msg, "type": "invalid_request_error", "param": null, "code": null}}).to_string().into_bytes()
        }),
        ("message_60k", |k| {
            let mut msg = "y".repeat(60_000);
            msg.push_str(k);
            json!({"error": {"message": msg, "type": "invalid_request_error", "param": null, "code": null}}).to_string().into_bytes()
        }),
    ]
}

/// The statuses each JSON shape is sent with: the two the sidecar hands back to the client
/// (400, 422) and one of the others, in turn.
fn shape_statuses(i: usize) -> [u16; 3] {
    const OTHERS: [u16; 6] = [401, 403, 404, 429, 500, 503];
    [400, 422, OTHERS[i % OTHERS.len()]]
}

/// The parts of a stream before its first content (held by the sidecar, so an error after
/// them can still fail over).
fn stream_head(fam: Fam) -> Vec<String> {
    match fam {
        Fam::OpenAi | Fam::Gemini => vec![],
        Fam::Responses => vec![ev(
            "response.created",
            json!({"type": "response.created", "response": {"id": "resp_1", "object": "response", "status": "in_progress"}}),
        )],
        Fam::Anthropic => vec![
            ev(
                "message_start",
                json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": "claude-sonnet-4-20250514", "usage": {"input_tokens": 5, "output_tokens": 1}}}),
            ),
            ev(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ),
        ],
    }
}

/// One piece of content, which commits the stream to the client.
fn stream_content(fam: Fam) -> Vec<String> {
    match fam {
        Fam::OpenAi => vec![data(
            json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hello"}, "finish_reason": null}]}),
        )],
        Fam::Responses => vec![ev(
            "response.output_text.delta",
            json!({"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": "Hello"}),
        )],
        Fam::Anthropic => vec![ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
        )],
        Fam::Gemini => vec![data(
            json!({"candidates": [{"content": {"parts": [{"text": "Hello"}], "role": "model"}, "index": 0}], "responseId": "r1"}),
        )],
    }
}

fn data(v: Value) -> String {
    format!("data: {v}\n\n")
}

fn ev(name: &str, v: Value) -> String {
    format!("event: {name}\ndata: {v}\n\n")
}

/// The format's own in-stream error, the key in every field it has.
fn stream_error(fam: Fam, k: &str) -> String {
    let msg = format!("Upstream failure for key {k}");
    match fam {
        Fam::OpenAi => data(json!({"error": {"message": msg, "type": k, "param": k, "code": k}})),
        Fam::Responses => ev(
            "response.failed",
            json!({"type": "response.failed", "response": {"id": "resp_1", "object": "response", "status": "failed", "error": {"code": k, "message": msg}, "usage": null}}),
        ),
        Fam::Anthropic => ev(
            "error",
            json!({"type": "error", "error": {"type": k, "message": msg}}),
        ),
        Fam::Gemini => data(json!({"error": {"code": 500, "message": msg, "status": k}})),
    }
}

/// A data line that is not JSON at all.
fn stream_garbage(fam: Fam, k: &str) -> String {
    match fam {
        Fam::Anthropic => format!("event: content_block_delta\ndata: {k} is not JSON\n\n"),
        Fam::Responses => format!("event: response.output_text.delta\ndata: {k} is not JSON\n\n"),
        Fam::OpenAi | Fam::Gemini => format!("data: {k} is not JSON\n\n"),
    }
}

/// An event whose JSON is cut inside a string holding the key.
fn stream_malformed(fam: Fam, k: &str) -> String {
    match fam {
        Fam::OpenAi => format!(
            "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{k}\n\n"
        ),
        Fam::Responses => format!(
            "event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"delta\":\"{k}\n\n"
        ),
        Fam::Anthropic => format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{k}\n\n"
        ),
        Fam::Gemini => {
            format!("data: {{\"candidates\":[{{\"content\":{{\"parts\":[{{\"text\":\"{k}\n\n")
        }
    }
}

/// Well-formed JSON whose typed fields hold the key as a string: a deserializer's "invalid
/// type: string \"...\"" error quotes it.
fn stream_typed_wrong(fam: Fam, k: &str) -> String {
    match fam {
        Fam::OpenAi => data(json!({"usage": k, "choices": k})),
        Fam::Responses => ev(
            "response.completed",
            json!({"type": "response.completed", "response": {"status": "completed", "usage": k}}),
        ),
        Fam::Anthropic => ev(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": k}, "usage": k}),
        ),
        Fam::Gemini => data(json!({"candidates": k, "usageMetadata": k})),
    }
}

fn sse(parts: Vec<String>) -> Reply {
    Reply::raw(200, "text/event-stream", parts.concat())
}

/// A complete, valid answer for `fam` with an extra top-level field.
fn valid_answer(fam: Fam, extra: Option<&str>) -> Reply {
    let mut v = match fam {
        Fam::OpenAi => {
            json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}],
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1]}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
        }
        Fam::Responses => json!({"id": "resp_1", "object": "response", "status": "completed",
            "output": [{"type": "message", "id": "msg_1", "role": "assistant", "status": "completed", "content": [{"type": "output_text", "text": "Hello", "annotations": []}]}],
            "usage": {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}}),
        Fam::Anthropic => {
            json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-20250514",
            "content": [{"type": "text", "text": "Hello"}], "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": 1, "output_tokens": 1}})
        }
        Fam::Gemini => {
            json!({"candidates": [{"content": {"parts": [{"text": "Hello"}], "role": "model"}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1, "totalTokenCount": 2}, "responseId": "r1"})
        }
    };
    if let Some(k) = extra {
        v["x_upstream_debug"] = json!({"authorization": format!("Bearer {k}")});
    }
    Reply::json(200, v)
}

/// Every scenario, in a fixed order.
pub fn all() -> Vec<Scenario> {
    let mut out = Vec::new();

    // JSON error bodies of every shape, at statuses that are handed back and ones that are not.
    for (i, (shape, body)) in json_shapes().into_iter().enumerate() {
        for status in shape_statuses(i) {
            out.push(Scenario::new(
                format!("json.{shape}/{status}"),
                Want::Any,
                move |_, k| Some(Reply::raw(status, "application/json", body(k))),
            ));
        }
    }

    // Bodies that are not JSON, at every size that matters around the 300- and 1,000-byte cuts.
    out.push(Scenario::new("text.key_only/401", Want::Any, |_, k| {
        Some(Reply::raw(401, "text/plain", k))
    }));
    out.push(Scenario::new("text.key_only/400", Want::Any, |_, k| {
        Some(Reply::raw(400, "text/plain", format!("bad key {k}\n")))
    }));
    for kept in [8usize, 12, 19] {
        out.push(Scenario::new(
            format!("text.straddle_300_keeps_{kept}/400"),
            Want::Any,
            move |_, k| {
                Some(Reply::raw(
                    400,
                    "text/plain",
                    around(
                        "Bad request: ",
                        k,
                        300 - kept,
                        "\n",
                        300 - kept + k.len() + 20,
                    ),
                ))
            },
        ));
        out.push(Scenario::new(
            format!("html.straddle_300_keeps_{kept}/502"),
            Want::Any,
            move |_, k| {
                Some(Reply::raw(
                    502,
                    "text/html",
                    around(
                        "<html><body><h1>502</h1><p>",
                        k,
                        300 - kept,
                        "</p></body></html>",
                        300 - kept + k.len() + 40,
                    ),
                ))
            },
        ));
    }
    out.push(Scenario::new(
        "text.straddle_1000/400",
        Want::Any,
        |_, k| {
            Some(Reply::raw(
                400,
                "text/plain",
                around("Bad request: ", k, 1_000 - 12, "\n", 1_000 + k.len()),
            ))
        },
    ));
    out.push(Scenario::new(
        "text.64k_key_at_end/400",
        Want::Any,
        |_, k| {
            Some(Reply::raw(
                400,
                "text/plain",
                around("Bad request: ", k, 70_000 - k.len() - 1, "\n", 70_000),
            ))
        },
    ));
    out.push(Scenario::new(
        "html.60k_key_at_end/500",
        Want::Any,
        |_, k| {
            Some(Reply::raw(
                500,
                "text/html",
                around("<html><p>", k, 60_000, "</p></html>", 60_000 + k.len() + 11),
            ))
        },
    ));
    out.push(Scenario::new("json.malformed/400", Want::Any, |_, k| {
        Some(Reply::raw(
            400,
            "application/json",
            format!(r#"{{"error":{{"message":"Invalid value.","param":"{k}""#),
        ))
    }));
    out.push(Scenario::new(
        "json.malformed_message/422",
        Want::Any,
        |_, k| {
            Some(Reply::raw(
                422,
                "application/json",
                format!(r#"{{"error":{{"message":"bad key x{k}"#),
            ))
        },
    ));

    // Redirects, headers and the status line.
    for status in [302u16, 307] {
        out.push(Scenario::new(
            format!("redirect.location/{status}"),
            Want::Any,
            move |_, k| {
                Some(
                    Reply::raw(
                        status,
                        "text/html",
                        format!("<a href=\"http://127.0.0.1:9/?key={k}\">moved</a>"),
                    )
                    .header("location", &format!("http://127.0.0.1:9/{k}?key={k}")),
                )
            },
        ));
    }
    for status in [400u16, 429] {
        out.push(Scenario::new(
            format!("headers.echo/{status}"),
            Want::Any,
            move |_, k| Some(echo_headers(Reply::json(status, clean_openai_error()), k)),
        ));
    }
    for status in [400u16, 500] {
        out.push(Scenario::new(
            format!("status_line.reason/{status}"),
            Want::Any,
            move |_, k| {
                Some(
                    Reply::json(status, clean_openai_error())
                        .reason_phrase(&format!("Bad key {k}")),
                )
            },
        ));
    }

    // 200 streams that fail inside, before and after their first content.
    out.push(Scenario::new(
        "stream.error_before_content",
        Want::Stream,
        |f, k| {
            let mut p = stream_head(f);
            p.push(stream_error(f, k));
            Some(sse(p))
        },
    ));
    out.push(Scenario::new(
        "stream.error_after_content",
        Want::Stream,
        |f, k| {
            let mut p = stream_head(f);
            p.extend(stream_content(f));
            p.push(stream_error(f, k));
            Some(sse(p))
        },
    ));
    out.push(Scenario::new(
        "stream.responses_error_event_after_content",
        Want::Stream,
        |f, k| {
            (f == Fam::Responses).then(|| {
                let mut p = stream_head(f);
                p.extend(stream_content(f));
                p.push(ev(
                    "error",
                    json!({"type": "error", "code": k, "message": format!("failure for {k}"), "param": k}),
                ));
                sse(p)
            })
        },
    ));
    for (when, content) in [("before", false), ("after", true)] {
        out.push(Scenario::new(
            format!("stream.not_json_{when}_content"),
            Want::Stream,
            move |f, k| {
                let mut p = stream_head(f);
                if content {
                    p.extend(stream_content(f));
                }
                p.push(stream_garbage(f, k));
                Some(sse(p))
            },
        ));
        out.push(Scenario::new(
            format!("stream.malformed_json_{when}_content"),
            Want::Stream,
            move |f, k| {
                let mut p = stream_head(f);
                if content {
                    p.extend(stream_content(f));
                }
                p.push(stream_malformed(f, k));
                Some(sse(p))
            },
        ));
        out.push(Scenario::new(
            format!("stream.typed_field_holds_key_{when}_content"),
            Want::Stream,
            move |f, k| {
                let mut p = stream_head(f);
                if content {
                    p.extend(stream_content(f));
                }
                p.push(stream_typed_wrong(f, k));
                Some(sse(p))
            },
        ));
    }
    out.push(Scenario::new(
        "stream.gemini_prompt_blocked",
        Want::Stream,
        |f, k| {
            (f == Fam::Gemini).then(|| {
                sse(vec![data(
                    json!({"promptFeedback": {"blockReason": k, "blockReasonMessage": format!("blocked for {k}")}}),
                )])
            })
        },
    ));
    out.push(Scenario::new(
        "stream.not_event_stream",
        Want::Stream,
        |_, k| Some(Reply::raw(200, "text/html", format!("<html>{k}</html>"))),
    ));

    // 200 answers that are failures or broken.
    out.push(Scenario::new("ok.error_object", Want::Plain, |f, k| {
        let msg = format!("failure for {k}");
        Some(Reply::json(
            200,
            match f {
                Fam::OpenAi => json!({"error": {"message": msg, "type": k, "code": k, "param": k}}),
                Fam::Responses => json!({"id": "resp_1", "object": "response", "status": "failed", "error": {"code": k, "message": msg}}),
                Fam::Anthropic => json!({"type": "error", "error": {"type": k, "message": msg}}),
                Fam::Gemini => json!({"error": {"code": 500, "message": msg, "status": k}}),
            },
        ))
    }));
    out.push(Scenario::new("ok.typed_field_holds_key", Want::Plain, |f, k| {
        Some(Reply::json(
            200,
            match f {
                Fam::OpenAi => json!({"id": "x", "object": "chat.completion", "choices": k, "usage": k}),
                Fam::Responses => json!({"id": "resp_1", "object": "response", "status": "completed", "usage": k}),
                Fam::Anthropic => json!({"id": "msg_1", "type": "message", "role": "assistant", "content": k, "usage": k}),
                Fam::Gemini => json!({"candidates": k, "usageMetadata": k}),
            },
        ))
    }));
    out.push(Scenario::new("ok.malformed_json", Want::Plain, |_, k| {
        Some(Reply::raw(
            200,
            "application/json",
            format!(r#"{{"id":"x","choices":[{{"message":{{"content":"{k}"#),
        ))
    }));
    out.push(Scenario::new("ok.not_json", Want::Plain, |_, k| {
        Some(Reply::raw(200, "text/html", format!("<html>{k}</html>")))
    }));
    out.push(Scenario::new("ok.gemini_prompt_blocked", Want::Plain, |f, k| {
        (f == Fam::Gemini).then(|| {
            Reply::json(
                200,
                json!({"promptFeedback": {"blockReason": k, "blockReasonMessage": format!("blocked for {k}")}}),
            )
        })
    }));
    out.push(Scenario::new("ok.headers_echo", Want::Plain, |f, k| {
        Some(echo_headers(valid_answer(f, None), k))
    }));
    // A successful answer that carries the key: passed through byte for byte today.
    out.push(Scenario::new(
        "success.extra_field_holds_key",
        Want::Plain,
        |f, k| Some(valid_answer(f, Some(k))),
    ));
    out
}
