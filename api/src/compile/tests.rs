use super::*;
use crate::route::{PriceSpec, RuleMatch, RuleSpec};

struct Keys;
impl SecretSource for Keys {
    fn get(&self, _ns: &str, r: &SecretKeyRef) -> Result<String, String> {
        if r.name == "missing" {
            Err("secret `missing` not found".into())
        } else {
            Ok(format!("key-of-{}", r.name))
        }
    }
}

fn backend(name: &str, provider: ProviderKind, model: &str) -> BackendSpec {
    BackendSpec {
        name: name.into(),
        provider,
        model: model.into(),
        secret_ref: provider.needs_key().then(|| SecretKeyRef {
            name: "k".into(),
            key: "api-key".into(),
        }),
        ..Default::default()
    }
}

fn spec(backends: Vec<BackendSpec>) -> LLMRouteSpec {
    LLMRouteSpec {
        backends,
        ..Default::default()
    }
}

fn errors(r: Result<CompiledRoute, ObjectError>) -> Vec<String> {
    r.unwrap_err()
        .errors
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn without_weights_the_first_backend_is_primary_and_the_rest_fall_back() {
    let s = spec(vec![
        backend("a", ProviderKind::Openai, "gpt-4o-2024-08-06"),
        backend("b", ProviderKind::Anthropic, "claude-sonnet-4-20250514"),
    ]);
    let r = compile_route("ns", "chat", &s, &Keys).unwrap().route;
    assert_eq!(r.model, "chat");
    assert_eq!(
        r.backends.iter().map(|b| b.weight).collect::<Vec<_>>(),
        [1, 0]
    );
    assert_eq!(r.fallbacks, [0, 1]);
    assert_eq!(r.backends[1].base_url, "https://api.anthropic.com/v1");
    assert_eq!(r.retry.attempts, 2);
    assert_eq!(r.timeouts.first_token_ms, 30_000);
}

#[test]
fn explicit_weights_leave_unset_ones_at_zero() {
    let mut a = backend("a", ProviderKind::Openai, "gpt-4o");
    a.weight = Some(3);
    let s = spec(vec![a, backend("b", ProviderKind::Mock, "m")]);
    let r = compile_route("ns", "chat", &s, &Keys).unwrap().route;
    assert_eq!(
        r.backends.iter().map(|b| b.weight).collect::<Vec<_>>(),
        [3, 0]
    );
}

#[test]
fn all_zero_weights_are_refused() {
    let mut a = backend("a", ProviderKind::Mock, "m");
    a.weight = Some(0);
    let e = errors(compile_route("ns", "r", &spec(vec![a]), &Keys));
    assert!(
        e[0].starts_with("spec.backends: when weights are set"),
        "{e:?}"
    );
}

#[test]
fn unknown_fallbacks_and_rule_backends_name_the_field_and_the_choices() {
    let mut s = spec(vec![backend("a", ProviderKind::Mock, "m")]);
    s.fallbacks = Some(vec!["a".into(), "nope".into()]);
    s.strategy = Some(Strategy::Rules);
    s.rules = vec![RuleSpec {
        name: None,
        matches: RuleMatch::default(),
        backends: vec!["zzz".into()],
    }];
    let e = errors(compile_route("ns", "r", &s, &Keys));
    assert!(
        e.iter().any(
            |m| m.starts_with("spec.fallbacks[1]: `nope` is not a backend")
                && m.ends_with("known backends: a")
        ),
        "{e:?}"
    );
    assert!(
        e.iter().any(|m| m.starts_with("spec.rules[0].backends[0]")),
        "{e:?}"
    );
}

#[test]
fn duplicate_backend_names_are_refused() {
    let s = spec(vec![
        backend("a", ProviderKind::Mock, "m"),
        backend("a", ProviderKind::Mock, "n"),
    ]);
    let e = errors(compile_route("ns", "r", &s, &Keys));
    assert!(
        e[0].contains("spec.backends[1].name") && e[0].contains("used twice"),
        "{e:?}"
    );
}

#[test]
fn providers_without_endpoint_need_base_url_and_azure_needs_a_deployment() {
    let mut az = backend("az", ProviderKind::Azure, "gpt-4o");
    az.secret_ref = Some(SecretKeyRef {
        name: "k".into(),
        key: "k".into(),
    });
    let s = spec(vec![
        backend("c", ProviderKind::OpenaiCompatible, "llama"),
        az,
    ]);
    let e = errors(compile_route("ns", "r", &s, &Keys));
    assert!(
        e.iter().any(|m| m.starts_with("spec.backends[0].baseUrl")),
        "{e:?}"
    );
    assert!(
        e.iter().any(|m| m.starts_with("spec.backends[1].baseUrl")),
        "{e:?}"
    );
    assert!(
        e.iter().any(|m| m.starts_with("spec.backends[1].azure")),
        "{e:?}"
    );
}

#[test]
fn keyed_providers_need_a_secret_and_the_error_never_shows_a_key() {
    let mut a = backend("a", ProviderKind::Openai, "gpt-4o");
    a.secret_ref = None;
    let mut b = backend("b", ProviderKind::Openai, "gpt-4o");
    b.secret_ref = Some(SecretKeyRef {
        name: "missing".into(),
        key: "x".into(),
    });
    let e = errors(compile_route("ns", "r", &spec(vec![a, b]), &Keys));
    assert!(
        e[0].starts_with("spec.backends[0].secretRef: provider `openai` needs an API key"),
        "{e:?}"
    );
    assert!(
        e[1].starts_with("spec.backends[1].secretRef: secret `missing`"),
        "{e:?}"
    );
}

#[test]
fn bad_durations_and_money_name_their_fields() {
    let mut s = spec(vec![backend("a", ProviderKind::Mock, "m")]);
    s.timeouts = Some(crate::route::TimeoutSpec {
        first_token: Some("3 seconds".into()),
        ..Default::default()
    });
    s.backends[0].prices = Some(PriceSpec {
        input: Some("$1".into()),
        ..Default::default()
    });
    let e = errors(compile_route("ns", "r", &s, &Keys));
    assert!(
        e.iter()
            .any(|m| m.starts_with("spec.timeouts.firstToken: `3 seconds` is not a duration")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("spec.backends[0].prices.input")),
        "{e:?}"
    );
}

#[test]
fn price_overrides_replace_the_table_field_by_field() {
    let mut a = backend("a", ProviderKind::Openai, "gpt-4o-2024-08-06");
    a.prices = Some(PriceSpec {
        output: Some("9.00".into()),
        ..Default::default()
    });
    let r = compile_route("ns", "r", &spec(vec![a]), &Keys)
        .unwrap()
        .route;
    assert_eq!(r.backends[0].prices.input, 2_500_000);
    assert_eq!(r.backends[0].prices.output, 9_000_000);
    assert!(r.backends[0].priced);
}

#[test]
fn unpinned_models_and_unknown_prices_warn_but_compile() {
    let s = spec(vec![
        backend("a", ProviderKind::Openai, "gpt-4o"),
        backend("b", ProviderKind::Vllm, "my-llama"),
    ]);
    let c = compile_route("ns", "r", &s, &Keys).unwrap();
    let w: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
    assert!(
        w.iter()
            .any(|m| m.starts_with("spec.backends[0].model: `gpt-4o` is an alias")),
        "{w:?}"
    );
    assert!(
        w.iter()
            .any(|m| m.starts_with("spec.backends[1].prices: no shipped price")),
        "{w:?}"
    );
}

#[test]
fn credentials_in_headers_are_refused() {
    let mut a = backend("a", ProviderKind::Openrouter, "openai/gpt-4o");
    a.headers
        .insert("Authorization".into(), "Bearer sk-x".into());
    a.headers
        .insert("HTTP-Referer".into(), "https://example.com".into());
    let e = errors(compile_route("ns", "r", &spec(vec![a]), &Keys));
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("spec.backends[0].headers.Authorization"),
        "{e:?}"
    );
}

#[test]
fn two_routes_claiming_one_model_name_are_refused() {
    let a = compile_route(
        "ns",
        "a",
        &spec(vec![backend("x", ProviderKind::Mock, "m")]),
        &Keys,
    )
    .unwrap()
    .route;
    let mut s = spec(vec![backend("x", ProviderKind::Mock, "m")]);
    s.aliases = vec!["a".into()];
    let b = compile_route("ns", "b", &s, &Keys).unwrap().route;
    let e = assemble(vec![a, b], vec![]).unwrap_err().to_string();
    assert!(
        e.contains(
            "LLMRoute ns/b: spec.aliases[0]: model name `a` is already served by LLMRoute ns/a"
        ),
        "{e}"
    );
}

#[test]
fn versions_follow_content() {
    let a = compile_route(
        "ns",
        "a",
        &spec(vec![backend("x", ProviderKind::Mock, "m")]),
        &Keys,
    )
    .unwrap()
    .route;
    let v1 = assemble(vec![a.clone()], vec![]).unwrap().version;
    assert_eq!(v1, assemble(vec![a.clone()], vec![]).unwrap().version);
    let mut b = a;
    b.backends[0].weight = 7;
    assert_ne!(v1, assemble(vec![b], vec![]).unwrap().version);
}

#[test]
fn budgets_need_a_limit_and_downgrades_need_a_known_backend() {
    let mut spec_b = LLMBudgetSpec::default();
    let e = compile_budget("ns", "b", &spec_b).unwrap_err().to_string();
    assert!(e.contains("spec.limit"), "{e}");
    spec_b.limit.usd = Some("10".into());
    spec_b.action = Some(BudgetAction::Downgrade);
    let e = compile_budget("ns", "b", &spec_b).unwrap_err().to_string();
    assert!(e.contains("spec.downgradeBackend"), "{e}");
    spec_b.downgrade_backend = Some("cheap".into());
    let budget = compile_budget("ns", "b", &spec_b).unwrap();
    let route = compile_route(
        "ns",
        "r",
        &spec(vec![backend("x", ProviderKind::Mock, "m")]),
        &Keys,
    )
    .unwrap()
    .route;
    let e = assemble(vec![route], vec![budget]).unwrap_err().to_string();
    assert!(e.contains("route ns/r has no backend `cheap`"), "{e}");
}

fn with_url(url: &str) -> Vec<String> {
    let mut b = backend("a", ProviderKind::OpenaiCompatible, "llama");
    b.base_url = Some(url.into());
    match compile_route("ns", "r", &spec(vec![b]), &Keys) {
        Ok(_) => Vec::new(),
        Err(e) => e.errors.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn base_urls_must_be_absolute_http_urls_a_request_can_be_built_on() {
    for good in [
        "https://api.example.com/v1",
        "http://127.0.0.1:8000/v1/",
        "http://[::1]:11434/v1",
        "http://vllm_server.svc:8000",
        "https://gateway.example.com/path%20with/v1",
    ] {
        assert_eq!(with_url(good), Vec::<String>::new(), "{good}");
    }
    for (bad, says) in [
        (
            "https://api.example.com /v1",
            "contains a space or control character",
        ),
        (
            "https://api.example.com/v1\r\n",
            "contains a space or control character",
        ),
        (
            "\thttps://api.example.com/v1",
            "contains a space or control character",
        ),
        ("ftp://api.example.com/v1", "is not an absolute http(s) URL"),
        ("api.example.com/v1", "is not an absolute http(s) URL"),
        ("https:///v1", "has no host"),
        ("https://", "has no host"),
        ("https://api.example.com:99999/v1", "has the port `99999`"),
        ("https://api.example.com:/v1", "has the port ``"),
        ("https://user:pass@api.example.com/v1", "carries user info"),
        (
            "https://api.example.com/v1?key=1",
            "has a query or fragment",
        ),
        ("https://api.exa<mple.com/v1", "has an invalid host"),
        ("https://api.example.com/v{1}", "has `{` in its path"),
        (
            "https://api.example.com/v1%zz",
            "has a `%` not followed by two hex digits",
        ),
        ("https://apí.example.com/v1", "has non-ASCII characters"),
        ("http://[::1/v1", "unclosed IPv6 host"),
    ] {
        let e = with_url(bad);
        assert!(
            e.len() == 1 && e[0].starts_with("spec.backends[0].baseUrl: ") && e[0].contains(says),
            "{bad:?}: {e:?}"
        );
        assert!(!e[0].contains(['\r', '\n', '\t']), "{e:?}");
    }
}

#[test]
fn names_models_and_aliases_must_be_text_without_control_characters() {
    let mut s = spec(vec![backend("a", ProviderKind::Mock, "m")]);
    s.model = Some(String::new());
    s.aliases = vec!["ok".into(), "bad\r\nx-injected: 1".into(), " padded".into()];
    let e = errors(compile_route("ns", "r", &s, &Keys));
    assert!(
        e.iter()
            .any(|m| m.starts_with("spec.model: must not be empty")),
        "{e:?}"
    );
    assert!(
        e.iter().any(|m| m.starts_with(
            "spec.aliases[1]: \"bad\\r\\nx-injected: 1\" contains a control character"
        )),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("spec.aliases[2]: \" padded\" starts or ends with a space")),
        "{e:?}"
    );
    assert!(!e.iter().any(|m| m.starts_with("spec.aliases[0]")), "{e:?}");

    let mut b = backend("a", ProviderKind::Openai, "gpt-4o\u{0}");
    b.variant = Some("v\n".into());
    let mut s = spec(vec![b, backend("", ProviderKind::Mock, "")]);
    s.rules = vec![RuleSpec {
        name: Some("r\r".into()),
        matches: RuleMatch {
            tasks: vec![String::new()],
            ..Default::default()
        },
        backends: vec!["a".into()],
    }];
    let e = errors(compile_route("ns", "r", &s, &Keys));
    for field in [
        "spec.backends[0].model: ",
        "spec.backends[0].variant: ",
        "spec.backends[1].name: ",
        "spec.backends[1].model: must not be empty",
        "spec.rules[0].name: ",
        "spec.rules[0].match.tasks[0]: must not be empty",
    ] {
        assert!(e.iter().any(|m| m.starts_with(field)), "{field}: {e:?}");
    }
    assert!(!e.iter().any(|m| m.contains(['\r', '\n', '\0'])), "{e:?}");

    // A model id with a space would break the URL of Gemini and Azure requests.
    let e = errors(compile_route(
        "ns",
        "r",
        &spec(vec![backend("a", ProviderKind::Gemini, "gemini 2.5 flash")]),
        &Keys,
    ));
    assert!(
        e[0].starts_with("spec.backends[0].model: ") && e[0].contains("a space"),
        "{e:?}"
    );
}

#[test]
fn route_and_budget_names_follow_kubernetes_rules() {
    let s = spec(vec![backend("a", ProviderKind::Mock, "m")]);
    for (ns, name, field) in [
        ("ns", "chat\r\n", "metadata.name"),
        ("ns", "", "metadata.name"),
        ("ns", "Chat", "metadata.name"),
        ("n\0s", "chat", "metadata.namespace"),
        ("my.ns", "chat", "metadata.namespace"),
    ] {
        let e = compile_route(ns, name, &s, &Keys).unwrap_err();
        assert!(e.errors[0].field == field, "{ns:?}/{name:?}: {e}");
        assert!(!e.to_string().contains(['\r', '\n', '\0']), "{e}");
    }
    assert!(compile_route("team-a", "chat.v2", &s, &Keys).is_ok());

    let b = LLMBudgetSpec {
        routes: vec!["chat".into(), "bad\nroute".into()],
        limit: crate::budget::BudgetLimit {
            usd: Some("1".into()),
            tokens: None,
        },
        downgrade_backend: Some("Cheap One".into()),
        ..Default::default()
    };
    let e = compile_budget("ns", "b\n", &b).unwrap_err();
    let fields: Vec<&str> = e.errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        ["metadata.name", "spec.routes[1]", "spec.downgradeBackend"],
        "{e}"
    );
    assert!(!e.to_string().contains('\n'), "{e}");
}

#[test]
fn every_credential_bearing_header_is_refused_and_other_headers_need_clean_values() {
    for name in [
        "Authorization",
        "Proxy-Authorization",
        "Cookie",
        "X-Api-Key",
        "api-key",
        "x-goog-api-key",
        "X-Auth-Token",
        "X-Amz-Security-Token",
        "Ocp-Apim-Subscription-Key",
        "Helicone-Auth",
        "X-Access-Token",
        "X-Client-Secret",
        "X-Portkey-Api-Key",
    ] {
        let mut a = backend("a", ProviderKind::Openrouter, "openai/gpt-4o");
        a.headers.insert(name.into(), "sk-secret-value".into());
        let e = errors(compile_route("ns", "r", &spec(vec![a]), &Keys));
        assert!(
            e.len() == 1
                && e[0].starts_with(&format!("spec.backends[0].headers.{name}: "))
                && e[0].contains("carries a credential")
                && e[0].contains("secretRef"),
            "{name}: {e:?}"
        );
        assert!(!e[0].contains("sk-secret-value"), "{e:?}");
    }

    let mut a = backend("a", ProviderKind::Openrouter, "openai/gpt-4o");
    a.headers
        .insert("HTTP-Referer".into(), "https://example.com".into());
    a.headers.insert("X-Title".into(), "My App".into());
    a.headers
        .insert("OpenAI-Organization".into(), "org-1".into());
    let r = compile_route("ns", "r", &spec(vec![a]), &Keys)
        .unwrap()
        .route;
    assert_eq!(r.backends[0].headers.len(), 3);

    for (name, value, says) in [
        ("X-Title", "", "is empty"),
        ("X-Title", "a\r\nX-Injected: 1", "has a line break"),
        ("X-Title", " padded", "starts or ends with a space"),
        ("X Title", "v", "is not a valid HTTP header name"),
        ("", "v", "is not a valid HTTP header name"),
        ("X-Tit\nle", "v", "is not a valid HTTP header name"),
    ] {
        let mut a = backend("a", ProviderKind::Openrouter, "openai/gpt-4o");
        a.headers.insert(name.into(), value.into());
        let e = errors(compile_route("ns", "r", &spec(vec![a]), &Keys));
        assert!(
            e.len() == 1 && e[0].starts_with("spec.backends[0].headers.") && e[0].contains(says),
            "{name:?}: {value:?}: {e:?}"
        );
        assert!(!e[0].contains(['\r', '\n']), "{e:?}");
    }
}

#[test]
fn azure_deployments_and_api_versions_must_fit_in_a_url() {
    let mut az = backend("az", ProviderKind::Azure, "gpt-4o");
    az.base_url = Some("https://res.openai.azure.com/openai".into());
    az.azure = Some(crate::route::AzureSpec {
        deployment: "my deployment".into(),
        api_version: Some("2024-10-21#x".into()),
    });
    let e = errors(compile_route("ns", "r", &spec(vec![az]), &Keys));
    assert!(
        e.iter()
            .any(|m| m.starts_with("spec.backends[0].azure.deployment: ")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("spec.backends[0].azure.apiVersion: ")),
        "{e:?}"
    );
}
