use super::*;
use llmesh_api::compile::{SecretSource, compile_budget, compile_route};
use llmesh_api::route::SecretKeyRef;

struct Keys(Vec<(&'static str, &'static str)>);

impl SecretSource for Keys {
    fn get(&self, namespace: &str, r: &SecretKeyRef) -> Result<String, String> {
        self.0
            .iter()
            .find(|(n, _)| *n == r.name)
            .map(|(_, v)| v.to_string())
            .ok_or_else(|| format!("Secret {namespace}/{} not found", r.name))
    }
}

fn spec(yaml: &str) -> LLMRouteSpec {
    serde_saphyr::from_str(yaml).unwrap()
}

const SPLIT: &str = "
backends:
  - {name: primary, provider: openai, model: gpt-4o-2024-08-06, secretRef: {name: openai, key: api-key}, weight: 90}
  - {name: canary, provider: mock, model: gpt-4o, weight: 10}
  - {name: backup, provider: mock, model: small, weight: 0}
";

#[test]
fn backends_read_as_words() {
    assert_eq!(
        backends_in_words(&spec(SPLIT)),
        "primary=openai/gpt-4o-2024-08-06 90%, canary=mock/gpt-4o 10%, backup=mock/small fallback"
    );
    let unweighted = spec(
        "backends: [{name: a, provider: mock, model: x}, {name: b, provider: mock, model: y}]",
    );
    assert_eq!(
        backends_in_words(&unweighted),
        "a=mock/x 100%, b=mock/y fallback"
    );
    let thirds = spec(
        "backends: [{name: a, provider: mock, model: x, weight: 1}, {name: b, provider: mock, model: y, weight: 2}]",
    );
    assert_eq!(backends_in_words(&thirds), "a=mock/x 33.3%, b=mock/y 66.7%");
}

#[test]
fn missing_secrets_are_references_and_the_rest_is_the_spec() {
    let s = spec(SPLIT);
    let compiled = compile_route("team", "chat", &s, &Keys(vec![]));
    let (o, route) = route_outcome("chat", 7, &s, compiled);
    assert!(route.is_none());
    assert_eq!(o.generation, 7);
    assert_eq!(o.model, "chat");
    assert!(o.invalid.is_empty(), "{:?}", o.invalid);
    assert_eq!(o.unresolved.len(), 1);
    assert_eq!(o.unresolved[0].field, "spec.backends[0].secretRef");
    assert!(!o.served());

    let no_ref = spec("backends: [{name: a, provider: openai, model: gpt-4o-2024-08-06}]");
    let (o, _) = route_outcome(
        "chat",
        1,
        &no_ref,
        compile_route("team", "chat", &no_ref, &Keys(vec![])),
    );
    assert_eq!(
        o.invalid.len(),
        1,
        "a provider without secretRef is a spec error"
    );
    assert!(o.unresolved.is_empty());
}

#[test]
fn a_compiled_route_carries_its_warnings_and_never_its_key() {
    let s = spec(&SPLIT.replace("model: gpt-4o-2024-08-06", "model: gpt-4o"));
    let keys = Keys(vec![("openai", "sk-very-secret")]);
    let (o, route) = route_outcome("chat", 1, &s, compile_route("team", "chat", &s, &keys));
    assert!(o.served());
    assert!(route.is_some());
    let fields: Vec<&str> = o.warnings.iter().map(|w| w.field.as_str()).collect();
    // Unpinned on a hosted provider warns; the same name on the mock provider does not.
    assert_eq!(fields, ["spec.backends[0].model"]);
    let text = format!("{o:?}");
    assert!(!text.contains("sk-very-secret"));
}

fn claim(name: &str, created: &str, names: &[&str]) -> Claim {
    Claim {
        name: name.into(),
        created: created.into(),
        names: names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let f = if i == 0 {
                    "spec.model".to_string()
                } else {
                    format!("spec.aliases[{}]", i - 1)
                };
                (f, n.to_string())
            })
            .collect(),
    }
}

#[test]
fn the_older_route_keeps_a_model_name() {
    let claims = vec![
        claim("newer", "2025-01-02T00:00:00Z", &["other", "chat"]),
        claim("older", "2025-01-01T00:00:00Z", &["chat"]),
        claim("apart", "2025-01-03T00:00:00Z", &["embed"]),
    ];
    let refused = model_conflicts("team", &claims);
    assert_eq!(refused.len(), 1);
    let msg = &refused["newer"];
    assert!(
        msg.starts_with("spec.aliases[0]: model name `chat`"),
        "{msg}"
    );
    assert!(msg.contains("team/older"), "{msg}");
}

#[test]
fn a_downgrade_backend_must_exist_in_covered_routes() {
    let s = spec(SPLIT);
    let keys = Keys(vec![("openai", "k")]);
    let route = compile_route("team", "chat", &s, &keys).unwrap().route;
    let b: LLMBudgetSpec = serde_saphyr::from_str(
        "limit: {usd: \"10\"}\naction: downgrade\ndowngradeBackend: backup\n",
    )
    .unwrap();
    let budget = compile_budget("team", "cap", &b).unwrap();
    assert!(budget_errors(&budget, &[&route]).is_empty());
    let b: LLMBudgetSpec = serde_saphyr::from_str(
        "limit: {usd: \"10\"}\naction: downgrade\ndowngradeBackend: cheap\n",
    )
    .unwrap();
    let budget = compile_budget("team", "cap", &b).unwrap();
    let errs = budget_errors(&budget, &[&route]);
    assert_eq!(errs.len(), 1);
    assert!(errs[0].message.contains("team/chat has no backend `cheap`"));
}

#[test]
fn limits_read_as_words() {
    let b: LLMBudgetSpec = serde_saphyr::from_str("limit: {usd: \"250\"}\n").unwrap();
    assert_eq!(limit_in_words(&b).as_deref(), Some("$250.00/month"));
    let b: LLMBudgetSpec =
        serde_saphyr::from_str("limit: {usd: \"0.125\", tokens: 1000}\nperiod: day\n").unwrap();
    assert_eq!(
        limit_in_words(&b).as_deref(),
        Some("$0.125 or 1000 tokens/day")
    );
}
