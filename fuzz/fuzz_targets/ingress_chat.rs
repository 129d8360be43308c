//! The chat ingress (`/v1/chat/completions`), from the client's body to each provider's upstream
//! request: the prompt estimate and `Provider::request` for the OpenAI family (which splices the
//! client's bytes), Anthropic and Gemini (which translate). Properties: an upstream body is a
//! JSON object naming the backend's model; for the OpenAI family the body built from the
//! client's bytes and the one serialised from the parsed body are the same JSON.
#![no_main]

use bytes::Bytes;
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use llmesh_api::ProviderKind;
use llmesh_fuzz::{KEY, backend, no_key};
use llmesh_sidecar::providers::{Op, for_kind};
use llmesh_sidecar::tokens;
use serde_json::{Map, Value};

fn body_of(req: http::Request<http_body_util::Full<Bytes>>) -> Value {
    let bytes = futures::executor::block_on(req.into_body().collect())
        .unwrap()
        .to_bytes();
    serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "upstream body is not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    })
}

/// JSON equality, floats within 2 ULP: serde_json's default float parsing (the sidecar's) may
/// read a long decimal 1 ULP off, so the parsed body serialised again can differ there from the
/// client's own text sent on, which is the more faithful of the two.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            x == y || (x.to_bits().abs_diff(y.to_bits()) <= 2 && x.signum() == y.signum())
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(client) = serde_json::from_slice::<Map<String, Value>>(data) else {
        return;
    };
    let _ = tokens::chat_prompt(&client, true);
    let _ = tokens::answer_output(data);
    for kind in [
        ProviderKind::Openai,
        ProviderKind::Mistral,
        ProviderKind::Groq,
        ProviderKind::Azure,
        ProviderKind::Anthropic,
        ProviderKind::Gemini,
    ] {
        let b = backend(kind);
        let p = for_kind(kind);
        let family = !matches!(kind, ProviderKind::Anthropic | ProviderKind::Gemini);
        // As the proxy calls it: the parsed body already names the backend's model.
        let mut body = client.clone();
        body.insert("model".into(), Value::String(b.model.clone()));
        for op in [Op::Chat, Op::Completion, Op::Embedding] {
            if !p.supports(op) {
                continue;
            }
            for stream in [false, true] {
                let parsed = p.request(&b, op, &body, None, stream);
                let raw = p.request(&b, op, &body, Some(data), stream);
                match (parsed, raw) {
                    (Ok(a), Ok(c)) => {
                        let (a, c) = (body_of(a), body_of(c));
                        assert!(a.is_object(), "{a}");
                        if family {
                            assert!(
                                same(&a, &c),
                                "the spliced body {c} differs from the serialised one {a}"
                            );
                            assert_eq!(a["model"], Value::String(b.model.clone()));
                        }
                    }
                    (Err(a), Err(c)) => {
                        assert_eq!(a.message, c.message);
                        no_key("a request error", a.redacted(Some(KEY)).message.as_bytes());
                    }
                    (a, c) => panic!(
                        "from the parsed body: {:?}; from the client's bytes: {:?}",
                        a.map(|_| ()),
                        c.map(|_| ())
                    ),
                }
            }
        }
    }
});
