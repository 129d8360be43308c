//! What the operator concludes about each route and budget, as pure functions of the compiler's
//! answer: which errors are spec problems and which are missing references, which routes lose
//! a model-name conflict, and the backends in words for `kubectl get`.

use std::collections::{BTreeMap, HashMap};

use llmesh_api::compile::{CompiledRoute, FieldError, ObjectError};
use llmesh_api::money::format_usd;
use llmesh_api::snapshot::{Budget, Route};
use llmesh_api::{BudgetPeriod, LLMBudgetSpec, LLMRouteSpec};

/// The operator's conclusion about one route generation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    /// The `metadata.generation` it is about.
    pub generation: i64,
    /// The model name clients use.
    pub model: String,
    /// The backends in words (`primary=openai/gpt-4o 90%, canary=mock/x 10%`).
    pub backends: String,
    /// Spec errors (`Accepted=False`).
    pub invalid: Vec<FieldError>,
    /// Missing or unreadable Secrets and keys (`ResolvedRefs=False`).
    pub unresolved: Vec<FieldError>,
    /// Set when an older route of the namespace already serves one of the model names.
    pub conflict: Option<String>,
    /// Things that work but deserve attention (unpinned models, unknown prices).
    pub warnings: Vec<FieldError>,
}

impl Outcome {
    /// Whether the route goes into sidecar snapshots.
    pub fn served(&self) -> bool {
        self.invalid.is_empty() && self.unresolved.is_empty() && self.conflict.is_none()
    }
}

/// Splits the compiler's answer into an outcome and, when it compiled, the route.
pub fn route_outcome(
    name: &str,
    generation: i64,
    spec: &LLMRouteSpec,
    compiled: Result<CompiledRoute, ObjectError>,
) -> (Outcome, Option<Route>) {
    let mut outcome = Outcome {
        generation,
        model: spec.model.clone().unwrap_or_else(|| name.to_string()),
        backends: backends_in_words(spec),
        ..Outcome::default()
    };
    match compiled {
        Ok(c) => {
            outcome.warnings = c.warnings;
            (outcome, Some(c.route))
        }
        Err(e) => {
            for err in e.errors {
                if is_reference_error(&err) {
                    outcome.unresolved.push(err);
                } else {
                    outcome.invalid.push(err);
                }
            }
            (outcome, None)
        }
    }
}

/// Errors about a `secretRef` are missing references; everything else is the spec's fault.
/// A backend whose provider needs a key but names no `secretRef` is a spec error.
fn is_reference_error(e: &FieldError) -> bool {
    e.field.ends_with(".secretRef") && !e.message.contains("needs an API key")
}

/// `primary=openai/gpt-4o 90%, canary=anthropic/claude 10%, backup=mock/x fallback`.
pub fn backends_in_words(spec: &LLMRouteSpec) -> String {
    let any_weight = spec.backends.iter().any(|b| b.weight.is_some());
    let weights: Vec<u64> = spec
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if any_weight {
                u64::from(b.weight.unwrap_or(0))
            } else {
                u64::from(i == 0)
            }
        })
        .collect();
    let total: u64 = weights.iter().sum();
    spec.backends
        .iter()
        .zip(&weights)
        .map(|(b, &w)| {
            let share = if w == 0 || total == 0 {
                "fallback".to_string()
            } else {
                let pct = w as f64 * 100.0 / total as f64;
                if pct.fract() == 0.0 {
                    format!("{pct:.0}%")
                } else {
                    format!("{pct:.1}%")
                }
            };
            format!("{}={}/{} {share}", b.name, b.provider.as_str(), b.model)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One route's claim on model names, for [`model_conflicts`].
#[derive(Clone, Debug)]
pub struct Claim {
    /// Route name.
    pub name: String,
    /// `metadata.creationTimestamp` (RFC 3339): the older route keeps the name.
    pub created: String,
    /// `(field, model name)`: `spec.model` first, then `spec.aliases[i]`.
    pub names: Vec<(String, String)>,
}

impl Claim {
    /// The claim of a compiled route.
    pub fn of(route: &Route, created: &str) -> Self {
        let mut names = vec![("spec.model".to_string(), route.model.clone())];
        names.extend(
            route
                .aliases
                .iter()
                .enumerate()
                .map(|(i, a)| (format!("spec.aliases[{i}]"), a.clone())),
        );
        Self {
            name: route.name.clone(),
            created: created.to_string(),
            names,
        }
    }
}

/// In one namespace a model name belongs to one route: the oldest (then the first by name)
/// keeps it, and every later route claiming it is refused whole. Returns a message per refused
/// route, naming the field, the owner and the fix.
pub fn model_conflicts(namespace: &str, claims: &[Claim]) -> HashMap<String, String> {
    let mut order: Vec<&Claim> = claims.iter().collect();
    order.sort_by(|a, b| (&a.created, &a.name).cmp(&(&b.created, &b.name)));
    let mut owner: HashMap<&str, &str> = HashMap::new();
    let mut refused = HashMap::new();
    for claim in order {
        let clash = claim
            .names
            .iter()
            .find_map(|(field, m)| owner.get(m.as_str()).map(|o| (field, m, *o)));
        match clash {
            Some((field, m, other)) => {
                refused.insert(
                    claim.name.clone(),
                    format!(
                        "{field}: model name `{m}` is already served by the older LLMRoute {namespace}/{other}; rename it here or remove it there"
                    ),
                );
            }
            None => {
                for (_, m) in &claim.names {
                    owner.insert(m.as_str(), claim.name.as_str());
                }
            }
        }
    }
    refused
}

/// Checks a compiled budget against the served routes of its namespace (a downgrade backend
/// must exist in every route the budget covers). Returns the errors, empty when fine.
pub fn budget_errors(budget: &Budget, routes: &[&Route]) -> Vec<FieldError> {
    let Some(backend) = &budget.downgrade_backend else {
        return Vec::new();
    };
    routes
        .iter()
        .filter(|r| budget.covers(&r.namespace, &r.name))
        .filter(|r| !r.backends.iter().any(|b| &b.name == backend))
        .map(|r| FieldError {
            field: "spec.downgradeBackend".into(),
            message: format!(
                "LLMRoute {}/{} has no backend `{backend}`: add it to the route or list only routes that have it in spec.routes",
                r.namespace, r.name
            ),
        })
        .collect()
}

/// The cap in words for `kubectl get llmbudgets`: `$250.00/month`, `1000000 tokens/day`.
pub fn limit_in_words(spec: &LLMBudgetSpec) -> Option<String> {
    let period = match spec.period.unwrap_or_default() {
        BudgetPeriod::Hour => "hour",
        BudgetPeriod::Day => "day",
        BudgetPeriod::Month => "month",
    };
    let usd = spec
        .limit
        .usd
        .as_deref()
        .and_then(|u| llmesh_api::money::parse_usd(u).ok())
        .map(|m| format!("${}", usd_short(m)));
    let tokens = spec.limit.tokens.map(|t| format!("{t} tokens"));
    let parts: Vec<String> = usd.into_iter().chain(tokens).collect();
    (!parts.is_empty()).then(|| format!("{}/{period}", parts.join(" or ")))
}

/// USD with at least two decimals and no trailing zeros beyond them (`250.00`, `0.125`).
fn usd_short(micro: u64) -> String {
    let full = format_usd(micro);
    let trimmed = full.trim_end_matches('0');
    let decimals = trimmed.len() - trimmed.find('.').unwrap_or(trimmed.len()) - 1;
    if decimals < 2 {
        full[..full.len() - (6 - 2)].to_string()
    } else {
        trimmed.to_string()
    }
}

/// Groups items by namespace, keeping each group sorted by name.
pub fn by_namespace<T>(
    items: impl IntoIterator<Item = (String, String, T)>,
) -> BTreeMap<String, BTreeMap<String, T>> {
    let mut out: BTreeMap<String, BTreeMap<String, T>> = BTreeMap::new();
    for (ns, name, item) in items {
        out.entry(ns).or_default().insert(name, item);
    }
    out
}

#[cfg(test)]
mod tests;
