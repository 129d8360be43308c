//! The one upstream request every provider sends: a POST of JSON to the provider's URL, with the
//! key in the provider's auth header, the provider's own default headers, and the backend's extra
//! headers applied by one rule (see [`post`]).

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::Full;
use serde::Serialize;

use llmesh_api::snapshot::Backend;

use super::{ErrorClass, UpstreamError};

/// Where a provider wants the backend's key.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Auth {
    /// `Authorization: Bearer <key>` (OpenAI and the OpenAI-compatible family).
    Bearer,
    /// The key as the whole value of a header of its own (`api-key`, `x-api-key`,
    /// `x-goog-api-key`).
    Header(&'static str),
}

/// The body of an upstream request as JSON.
pub(crate) fn encode(body: &impl Serialize) -> Result<Vec<u8>, UpstreamError> {
    serde_json::to_vec(body).map_err(encode_failed)
}

/// The refusal of a body that does not serialise.
pub(crate) fn encode_failed(e: serde_json::Error) -> UpstreamError {
    UpstreamError::unsupported(format!("could not encode the upstream request: {e}"))
}

/// The POST of `body` to `url` for `backend`.
///
/// Headers, in order: `content-type: application/json`; `accept` (`text/event-stream` when
/// `stream`, else `application/json`); the provider's `defaults` (Anthropic's
/// `anthropic-version` and the client's forwarded betas); the key in `auth`'s header, marked
/// sensitive. Then the backend's extra headers, by one rule: a backend header replaces every
/// header of the same name set before it (names compared case-insensitively), so no header goes
/// out twice. Credential headers cannot be among the backend's: the route compiler refuses them,
/// so the key header is always the one set from the Secret.
pub(crate) fn post(
    backend: &Backend,
    url: String,
    auth: Auth,
    defaults: &[(HeaderName, HeaderValue)],
    body: Vec<u8>,
    stream: bool,
) -> Result<Request<Full<Bytes>>, UpstreamError> {
    let uri = http::Uri::try_from(url).map_err(|e| {
        UpstreamError::unsupported(format!(
            "backend `{}` has an invalid URL: {e}",
            backend.name
        ))
    })?;
    let mut req = Request::new(Full::new(Bytes::from(body)));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = uri;
    let h = req.headers_mut();
    h.reserve(3 + defaults.len() + backend.headers.len());
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(
        ACCEPT,
        HeaderValue::from_static(if stream {
            "text/event-stream"
        } else {
            "application/json"
        }),
    );
    for (k, v) in defaults {
        h.append(k.clone(), v.clone());
    }
    if let Some(key) = super::key(backend) {
        let (name, value) = match auth {
            Auth::Bearer => {
                let mut v = Vec::with_capacity(7 + key.len());
                v.extend_from_slice(b"Bearer ");
                v.extend_from_slice(key.as_bytes());
                (AUTHORIZATION, HeaderValue::from_bytes(&v))
            }
            Auth::Header(name) => (HeaderName::from_static(name), HeaderValue::from_str(key)),
        };
        let mut value = value.map_err(|_| UpstreamError {
            class: ErrorClass::Auth,
            status: None,
            message: format!(
                "the API key of backend `{}` contains characters not allowed in a header",
                backend.name
            ),
            retry_after: None,
            reason: "auth",
            openai_body: None,
        })?;
        value.set_sensitive(true);
        h.insert(name, value);
    }
    for (k, v) in &backend.headers {
        // Names and values were validated when the route was compiled.
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) else {
            return Err(UpstreamError::unsupported(format!(
                "invalid upstream request for backend `{}`: header `{k}` is not a valid HTTP header",
                backend.name
            )));
        };
        h.insert(name, value);
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmesh_api::snapshot::SecretValue;

    fn backend(headers: &[(&str, &str)]) -> Backend {
        Backend {
            name: "b".into(),
            variant: "b".into(),
            provider: llmesh_api::ProviderKind::Openai,
            model: "m".into(),
            base_url: "http://up.test/v1".into(),
            api_key: Some(SecretValue::new("sk-key-0123456789")),
            weight: 1,
            prices: Default::default(),
            priced: false,
            context_window: None,
            max_concurrency: None,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            azure: None,
            mock: None,
        }
    }

    fn values<'a>(req: &'a Request<Full<Bytes>>, name: &str) -> Vec<&'a str> {
        req.headers()
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn a_backend_header_replaces_a_default_of_the_same_name_whatever_its_case() {
        let b = backend(&[("Accept", "application/x-ndjson"), ("X-Title", "app")]);
        let defaults = [
            (
                HeaderName::from_static("anthropic-beta"),
                HeaderValue::from_static("a"),
            ),
            (
                HeaderName::from_static("anthropic-beta"),
                HeaderValue::from_static("b"),
            ),
        ];
        let req = post(
            &b,
            "http://up.test/v1/x".into(),
            Auth::Bearer,
            &defaults,
            vec![],
            true,
        )
        .unwrap();
        assert_eq!(values(&req, "accept"), ["application/x-ndjson"]);
        assert_eq!(values(&req, "x-title"), ["app"]);
        assert_eq!(values(&req, "content-type"), ["application/json"]);
        // Defaults the backend does not name all go out.
        assert_eq!(values(&req, "anthropic-beta"), ["a", "b"]);
        assert_eq!(values(&req, "authorization"), ["Bearer sk-key-0123456789"]);
        assert!(req.headers()["authorization"].is_sensitive());

        let b = backend(&[("ANTHROPIC-BETA", "pinned")]);
        let req = post(
            &b,
            "http://up.test/v1/x".into(),
            Auth::Header("x-api-key"),
            &defaults,
            vec![],
            false,
        )
        .unwrap();
        assert_eq!(values(&req, "anthropic-beta"), ["pinned"]);
        assert_eq!(values(&req, "accept"), ["application/json"]);
        assert_eq!(values(&req, "x-api-key"), ["sk-key-0123456789"]);
        assert!(values(&req, "authorization").is_empty());
    }

    #[test]
    fn a_bad_url_or_key_is_refused_with_the_backend_named() {
        let b = backend(&[]);
        let e = post(&b, "not a url".into(), Auth::Bearer, &[], vec![], false).unwrap_err();
        assert_eq!(e.class, ErrorClass::Unsupported);
        assert!(
            e.message.starts_with("backend `b` has an invalid URL"),
            "{}",
            e.message
        );
        let mut b = backend(&[]);
        b.api_key = Some(SecretValue::new("bad\nkey"));
        let e = post(
            &b,
            "http://up.test/".into(),
            Auth::Bearer,
            &[],
            vec![],
            false,
        )
        .unwrap_err();
        assert_eq!(e.class, ErrorClass::Auth);
        assert!(!e.message.contains("bad\nkey"), "{}", e.message);
    }
}
