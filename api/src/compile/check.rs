//! Checks of the text a spec carries into URLs, headers, metric labels and log lines: names,
//! model ids, base URLs and header fields. Each returns what is wrong and how to fix it, or
//! `None`; the caller names the field.
//!
//! Values are shown escaped (`"chat\r\n"`), so a message never carries a raw line break into a
//! log line or a status condition.

/// Header names that carry a credential. Keys come only from `secretRef`.
const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "x-auth-token",
    "x-amz-security-token",
    "ocp-apim-subscription-key",
];

/// Words that mark any other header name as carrying a credential (`helicone-auth`,
/// `x-access-token`, `x-portkey-api-key`, `x-client-secret`, ...).
const CREDENTIAL_WORDS: &[&str] = &[
    "auth",
    "token",
    "key",
    "secret",
    "password",
    "passwd",
    "cookie",
    "credential",
];

/// `value` escaped for a message: quotes, with control characters written as escapes.
pub(crate) fn shown(value: &str) -> String {
    format!("\"{}\"", value.escape_debug())
}

/// Text a client sends or a header or metric label carries (model names, aliases, variants,
/// rule names): not empty, no control characters, no space at either end.
pub(crate) fn text(value: &str, example: &str) -> Option<String> {
    if value.is_empty() {
        return Some(format!("must not be empty: write a name, like `{example}`"));
    }
    if value.chars().any(char::is_control) {
        return Some(format!(
            "{} contains a control character (a line break, tab or NUL, often pasted by accident): remove it",
            shown(value)
        ));
    }
    if value.trim() != value {
        return Some(format!(
            "{} starts or ends with a space, so it would never match what clients send: remove the space",
            shown(value)
        ));
    }
    None
}

/// An upstream id that goes into request bodies and URL paths (backend models, Azure
/// deployments and API versions): [`text`], and no whitespace or URL delimiter inside.
pub(crate) fn token(value: &str, example: &str) -> Option<String> {
    if let Some(e) = text(value, example) {
        return Some(e);
    }
    if let Some(c) = value
        .chars()
        .find(|c| c.is_whitespace() || matches!(c, '?' | '#'))
    {
        return Some(format!(
            "{} contains {}, which no provider id has and which would break the request URL: remove it, like `{example}`",
            shown(value),
            if c.is_whitespace() {
                "a space".to_string()
            } else {
                format!("`{c}`")
            }
        ));
    }
    None
}

/// A Kubernetes object name (a DNS subdomain: what `kubectl apply` accepts), so that a
/// standalone file and the cluster agree; a namespace is a DNS label.
pub(crate) fn object_name(value: &str, namespace: bool) -> Option<String> {
    let max = if namespace { 63 } else { 253 };
    let b = value.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= max
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|&c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || (!namespace && c == b'.')
        });
    (!ok).then(|| {
        format!(
            "{} is not a valid Kubernetes {}: use 1-{max} lower-case letters, digits{}, starting and ending with a letter or digit (like `chat`)",
            shown(value),
            if namespace { "namespace" } else { "object name" },
            if namespace { " and `-`" } else { ", `-` and `.`" },
        )
    })
}

/// A backend's `baseUrl`: an absolute http(s) URL with a host, an optional port and path, and
/// nothing llmesh could not append an API path to (no query, fragment or user info).
pub(crate) fn base_url(url: &str) -> Option<String> {
    const LIKE: &str = "write it like `https://api.example.com/v1`";
    let bad = |why: String| Some(format!("{} {why}", shown(url)));
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad(format!(
            "contains a space or control character (a line break pasted with it?): remove it; {LIKE}"
        ));
    }
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return bad(format!("is not an absolute http(s) URL: {LIKE}"));
    };
    if !url.is_ascii() {
        return bad(
            "has non-ASCII characters: write the host in its ASCII (xn--) form and percent-encode the path"
                .into(),
        );
    }
    if url.contains(['?', '#']) {
        return bad(format!(
            "has a query or fragment: llmesh appends the API path (like `/chat/completions`) to baseUrl, so it must end at the path (Azure's api-version goes in azure.apiVersion); {LIKE}"
        ));
    }
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if authority.contains('@') {
        return bad(
            "carries user info (`user:password@`): credentials must not be written in the route: put the key in a Secret and reference it with secretRef"
                .into(),
        );
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((h, after)) if after.is_empty() || after.starts_with(':') => {
                if h.is_empty()
                    || !h
                        .bytes()
                        .all(|c| c.is_ascii_hexdigit() || c == b':' || c == b'.')
                {
                    return bad(format!("has an invalid IPv6 host `[{h}]`; {LIKE}"));
                }
                (h, after.strip_prefix(':'))
            }
            _ => return bad(format!("has an unclosed IPv6 host `[`; {LIKE}")),
        },
        None => match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return bad(format!("has no host; {LIKE}"));
    }
    if !authority.starts_with('[')
        && !host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'))
    {
        return bad(format!(
            "has an invalid host `{host}`: use letters, digits, `-` and `.`; {LIKE}"
        ));
    }
    if let Some(p) = port
        && !(p.bytes().all(|c| c.is_ascii_digit()) && p.parse::<u16>().is_ok_and(|n| n > 0))
    {
        return bad(format!(
            "has the port `{p}`: a port is a number from 1 to 65535; {LIKE}"
        ));
    }
    if let Some(c) = path
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@/%".contains(c)))
    {
        return bad(format!(
            "has `{c}` in its path, which a URL cannot hold: percent-encode it (%{:02X})",
            c as u32
        ));
    }
    let pct = path.as_bytes();
    for (i, _) in path.match_indices('%') {
        if !(i + 2 < pct.len() && pct[i + 1].is_ascii_hexdigit() && pct[i + 2].is_ascii_hexdigit())
        {
            return bad(
                "has a `%` not followed by two hex digits: write `%25` for a literal `%`".into(),
            );
        }
    }
    None
}

/// A header from `backends[].headers`: a valid name that carries no credential, and a value
/// with no control characters.
pub(crate) fn header(name: &str, value: &str) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    if name.is_empty()
        || !name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
    {
        return Some(format!(
            "{} is not a valid HTTP header name: use letters, digits and `-`, like `X-Title`",
            shown(name)
        ));
    }
    if CREDENTIAL_HEADERS.contains(&lower.as_str())
        || CREDENTIAL_WORDS.iter().any(|w| lower.contains(w))
    {
        return Some(format!(
            "`{name}` carries a credential, and credentials must not be written in the route: put the key in a Secret and reference it with secretRef (the provider's auth header is set from it)"
        ));
    }
    if value.is_empty() {
        return Some(format!(
            "the value of `{name}` is empty: give it a value or remove the header"
        ));
    }
    if !value
        .bytes()
        .all(|c| c == b'\t' || (0x20..0x7f).contains(&c))
    {
        return Some(format!(
            "the value of `{name}`, {}, has a line break, control or non-ASCII character: remove it",
            shown(value)
        ));
    }
    if value.trim() != value {
        return Some(format!(
            "the value of `{name}`, {}, starts or ends with a space, which HTTP drops: remove it",
            shown(value)
        ));
    }
    None
}
