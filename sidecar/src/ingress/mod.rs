//! Client wire formats. Every request is translated into one internal request (an OpenAI chat
//! completions body) so one router serves them all, and the answer is translated back: the
//! OpenAI endpoints pass through, Anthropic's Messages API and OpenAI's Responses API translate.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};

use crate::error::{ApiError, ErrorFormat};
use crate::internal::{Endpoint, StreamEncoder, Usage};

pub mod messages;
pub mod responses;
pub mod stream;

/// An OpenAI chat body and, for translated formats, the translation back.
pub type Translated = (Map<String, Value>, Option<Box<dyn Translation>>);

/// What a translation keeps between a request and its answer.
pub trait Translation: Send {
    /// Translates a complete OpenAI chat completion into the client's format.
    fn response(&mut self, openai: &[u8], usage: Option<&Usage>) -> Result<Bytes, ApiError>;
    /// The encoder that writes a streamed answer in the client's format. It receives every
    /// OpenAI chunk, including the final usage chunk.
    fn encoder(self: Box<Self>) -> Box<dyn StreamEncoder>;
    /// Whether the client's own body may go to a backend that speaks its format natively
    /// (false when the translation resolved state only this sidecar has).
    fn passthrough(&self) -> bool {
        true
    }
    /// The handler's estimate of the translated prompt, in tokens, for a translation that
    /// reports usage when the backend does not. The handler always makes it for translated
    /// requests, so a translation need not read the prompt again.
    fn prompt_estimate(&mut self, _tokens: u32) {}
}

/// Per-request context a translation may need.
pub struct Context<'a> {
    /// Stored responses, for `previous_response_id`.
    pub responses: &'a responses::Store,
    /// The request id, used for ids in translated answers.
    pub request_id: &'a str,
}

/// Translates a client body into an OpenAI chat body. `None`: the body already is one.
pub fn translate(
    endpoint: Endpoint,
    body: Map<String, Value>,
    ctx: &Context<'_>,
) -> Result<Translated, ApiError> {
    match endpoint {
        Endpoint::Chat | Endpoint::Completion | Endpoint::Embedding => Ok((body, None)),
        Endpoint::Messages => messages::to_chat(body, ctx),
        Endpoint::Responses => responses::to_chat(body, ctx),
    }
}

/// Client headers a native backend receives with the client's own body.
const NATIVE_HEADERS: [&str; 2] = ["anthropic-version", "anthropic-beta"];

/// A client's request in the internal format, with everything about its wire format decided
/// once: whether its own body may go to a backend that speaks the format natively, whether only
/// such a backend can serve it, and how the answer goes back (see [`Ingress::answer`] and
/// [`Ingress::encoder`]).
pub struct Ingress {
    /// The endpoint called.
    pub endpoint: Endpoint,
    /// The internal (OpenAI-shaped) body: the client's, its translation, or, for a request only
    /// a native backend can serve, a stand-in to route and limit on.
    pub body: Map<String, Value>,
    /// Whether `body` is still the parse of the client's bytes: then a provider may send those
    /// bytes on with the backend's model spliced in. Every change to `body` clears it.
    pub verbatim: bool,
    /// The client's own body, for a backend that speaks its format natively (`None` for the
    /// internal format, and when the translation resolved state only this sidecar has).
    pub native: Option<Map<String, Value>>,
    /// The client headers that go with `native`.
    pub native_headers: Vec<(HeaderName, HeaderValue)>,
    /// Why only a native backend can serve the request (built-in tools, state kept at OpenAI).
    pub native_only: Option<ApiError>,
    /// The translation of the answer back, for a translated format.
    pub translation: Option<Box<dyn Translation>>,
}

impl Ingress {
    /// Parses and translates the client's body.
    pub fn read(
        endpoint: Endpoint,
        raw: &[u8],
        headers: &HeaderMap,
        ctx: &Context<'_>,
    ) -> Result<Self, ApiError> {
        let body: Map<String, Value> = serde_json::from_slice(raw).map_err(|e| {
            ApiError::bad_request(
                None,
                format!(
                    "llmesh: the request body is not a JSON object ({e}); send Content-Type: application/json with an object body"
                ),
            )
        })?;
        if endpoint.is_internal() {
            return Ok(Self {
                endpoint,
                body,
                verbatim: true,
                native: None,
                native_headers: Vec::new(),
                native_only: None,
                translation: None,
            });
        }
        // Kept for backends that speak the client's format natively (Anthropic on
        // /v1/messages, OpenAI on /v1/responses).
        let original = body.clone();
        let native_headers = NATIVE_HEADERS
            .into_iter()
            .filter_map(|n| Some((HeaderName::from_static(n), headers.get(n)?.clone())))
            .collect();
        let (body, translation, native_only) = match translate(endpoint, body, ctx) {
            Ok((b, t)) => (b, t, None),
            // Only a backend that speaks the Responses API natively can serve it: routed on a
            // stand-in body, sent as the client wrote it.
            Err(e) if responses::needs_native(&e) => {
                (responses::stand_in(&original), None, Some(e))
            }
            Err(e) => return Err(e),
        };
        let passthrough = translation.as_ref().is_none_or(|t| t.passthrough());
        Ok(Self {
            endpoint,
            body,
            verbatim: false,
            native: passthrough.then_some(original),
            native_headers,
            native_only,
            translation,
        })
    }

    /// The shape of error bodies for the client.
    pub fn error_format(&self) -> ErrorFormat {
        self.endpoint.error_format()
    }

    /// A complete answer in the client's format: a native answer (already in it) as it came,
    /// an internal one translated back.
    pub fn answer(
        &mut self,
        body: Bytes,
        usage: Option<&Usage>,
        native: bool,
    ) -> Result<Bytes, ApiError> {
        match &mut self.translation {
            Some(t) if !native => t.response(&body, usage),
            _ => Ok(body),
        }
    }

    /// The encoder for a streamed answer, native (in the client's format) or not.
    pub fn encoder(self, native: bool) -> Box<dyn StreamEncoder> {
        stream::encoder(self.endpoint, native, self.translation)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn read(endpoint: Endpoint, body: Value, headers: &HeaderMap) -> Result<Ingress, ApiError> {
        let store = responses::Store::default();
        let ctx = Context {
            responses: &store,
            request_id: "req-1",
        };
        Ingress::read(endpoint, body.to_string().as_bytes(), headers, &ctx)
    }

    #[test]
    fn the_internal_format_is_read_as_it_is() {
        let body = json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]});
        let mut i = read(Endpoint::Chat, body.clone(), &HeaderMap::new()).unwrap();
        assert_eq!(Value::Object(i.body.clone()), body);
        assert!(i.verbatim && i.native.is_none() && i.translation.is_none());
        assert!(i.native_only.is_none());
        assert_eq!(i.error_format(), ErrorFormat::OpenAi);
        let answer = Bytes::from_static(b"{\"id\":\"x\"}");
        assert_eq!(i.answer(answer.clone(), None, false).unwrap(), answer);
    }

    #[test]
    fn a_translated_format_keeps_its_own_body_and_headers_for_a_native_backend() {
        let body = json!({"model": "claude", "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}]});
        let mut headers = HeaderMap::new();
        headers.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
        headers.insert("x-other", HeaderValue::from_static("1"));
        let mut i = read(Endpoint::Messages, body.clone(), &headers).unwrap();
        assert!(!i.verbatim && i.translation.is_some() && i.native_only.is_none());
        assert_eq!(i.native.clone().map(Value::Object), Some(body));
        assert_eq!(
            i.native_headers,
            vec![(
                HeaderName::from_static("anthropic-version"),
                HeaderValue::from_static("2023-06-01")
            )]
        );
        assert_eq!(i.body["messages"][0]["content"], "hi");
        assert_eq!(i.error_format(), ErrorFormat::Anthropic);
        // A native answer is already in the client's format; an internal one is translated.
        let native = Bytes::from_static(b"{\"type\":\"message\"}");
        assert_eq!(i.answer(native.clone(), None, true).unwrap(), native);
        let chat = json!({"id": "c", "object": "chat.completion", "model": "m", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1}});
        let translated = i
            .answer(Bytes::from(chat.to_string()), None, false)
            .unwrap();
        let v: Value = serde_json::from_slice(&translated).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["content"][0]["text"], "hello");
    }

    #[test]
    fn a_request_only_a_native_backend_can_serve_is_routed_on_a_stand_in() {
        let body = json!({"model": "chat", "input": "find it",
            "tools": [{"type": "file_search", "vector_store_ids": ["vs"]}]});
        let i = read(Endpoint::Responses, body.clone(), &HeaderMap::new()).unwrap();
        assert!(i.native_only.is_some() && i.translation.is_none());
        assert_eq!(i.native.map(Value::Object), Some(body));
        assert_eq!(i.body["model"], "chat");
        assert_eq!(i.body["messages"][0]["role"], "user");
    }

    #[test]
    fn a_body_that_is_not_a_json_object_is_a_400() {
        let store = responses::Store::default();
        let ctx = Context {
            responses: &store,
            request_id: "req-1",
        };
        for raw in [&b"[1]"[..], b"{", b""] {
            let e = Ingress::read(Endpoint::Chat, raw, &HeaderMap::new(), &ctx)
                .err()
                .unwrap();
            assert_eq!(e.status, http::StatusCode::BAD_REQUEST);
        }
    }
}
