//! A LiteLLM proxy `config.yaml` -> `LLMRoute` and `LLMBudget` manifests that behave the same.
//!
//! One route per `model_name` (its deployments are the backends, weighted as LiteLLM's
//! `simple-shuffle` weighs them), the groups named in `fallbacks` and `context_window_fallbacks`
//! added as weight-0 backends listed in the route's `fallbacks`, retries, timeouts and cooldowns
//! from the router settings, the cache, and an `LLMBudget` from `max_budget`. Every setting with
//! no equivalent is named in a `#` comment saying why. Keys are never copied: `os.environ/VAR`
//! becomes a `secretRef` that a standalone sidecar reads from that very variable, and a literal
//! key is dropped (a comment says which variable to export instead).
//!
//! The output is compiled with the same compiler the sidecar uses for `--config` before it is
//! returned: an import that would not load is an error naming the LiteLLM setting.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::{Map, Value};

use llmesh_api::API_VERSION;
use llmesh_api::budget::{BudgetLimit, BudgetPeriod, LLMBudgetSpec};
use llmesh_api::compile::SecretSource;
use llmesh_api::manifest;
use llmesh_api::money::format_usd;
use llmesh_api::route::{
    AzureSpec, BackendSpec, CacheSpec, CircuitBreakerSpec, LLMRouteSpec, LimitsSpec, PriceSpec,
    ProviderKind, RetrySpec, SecretKeyRef, Strategy, TimeoutSpec,
};

/// A LiteLLM setting that cannot be imported, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct ImportError {
    /// The LiteLLM setting, like `model_list[2].litellm_params.api_base`.
    pub setting: String,
    /// What is wrong and what to do.
    pub message: String,
}

fn err(setting: impl Into<String>, message: impl Into<String>) -> ImportError {
    ImportError {
        setting: setting.into(),
        message: message.into(),
    }
}

/// LiteLLM's router retries twice when `num_retries` is not set.
const LITELLM_DEFAULT_RETRIES: u64 = 2;
/// llmesh's default whole-request limit, raised when LiteLLM's timeouts need more.
const LLMESH_DEFAULT_TOTAL_SECS: f64 = 300.0;

/// Converts a LiteLLM proxy config into a multi-document YAML file of `LLMRoute` and
/// `LLMBudget` manifests with `#` comments, loadable with `llmesh-sidecar --config`.
///
/// `env` resolves `os.environ/VAR` references of `api_base` and `api_version` that the config's
/// own `environment_variables` does not set; it is never asked for a key.
pub fn convert(
    source_name: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ImportError> {
    let doc: Value = serde_saphyr::from_str(text)
        .map_err(|e| err(source_name, format!("not valid YAML: {e}")))?;
    let Value::Object(top) = doc else {
        return Err(err(
            source_name,
            "not a LiteLLM config: expected a mapping with model_list",
        ));
    };
    let mut c = Converter {
        env_section: top
            .get("environment_variables")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default(),
        env,
        notes: Vec::new(),
        key_vars: BTreeSet::new(),
        stubs: BTreeMap::new(),
    };
    c.run(source_name, &top)
}

struct Converter<'a> {
    env_section: Map<String, Value>,
    env: &'a dyn Fn(&str) -> Option<String>,
    /// Notes on settings that apply to the whole file.
    notes: Vec<String>,
    /// Environment variables the sidecar reads keys from.
    key_vars: BTreeSet<String>,
    /// Secret stubs for a cluster: (name, key) -> the variable standalone mode reads.
    stubs: BTreeMap<(String, String), String>,
}

/// One `model_list` entry the importer can serve.
struct Deployment {
    /// Index in `model_list`.
    index: usize,
    group: String,
    backend: BackendSpec,
    /// The backend name before de-duplication.
    base_name: String,
    weight: Option<f64>,
    rpm: Option<f64>,
    tpm: Option<f64>,
    timeout: Option<f64>,
    stream_timeout: Option<f64>,
    notes: Vec<String>,
}

/// The settings that `router_settings` and `litellm_settings` both may hold, resolved.
#[derive(Default)]
struct Settings {
    num_retries: Option<u64>,
    timeout: Option<f64>,
    stream_timeout: Option<f64>,
    allowed_fails: Option<u64>,
    cooldown_time: Option<f64>,
    strategy: Option<(String, Strategy)>,
    fallbacks: Vec<(String, Vec<String>)>,
    default_fallbacks: Vec<String>,
    context_window_fallbacks: Vec<(String, Vec<String>)>,
    aliases: Vec<(String, String)>,
    cache: Option<CacheSpec>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Object<'a, T> {
    api_version: &'a str,
    kind: &'a str,
    metadata: Metadata<'a>,
    spec: &'a T,
}

#[derive(Serialize)]
struct Metadata<'a> {
    name: &'a str,
}

impl Converter<'_> {
    fn run(&mut self, source_name: &str, top: &Map<String, Value>) -> Result<String, ImportError> {
        for key in top.keys() {
            match key.as_str() {
                "model_list" | "router_settings" | "litellm_settings" | "general_settings"
                | "environment_variables" => {}
                "include" => self.notes.push(
                    "`include`: the included files are not read; import each one and join the outputs".into(),
                ),
                other => self.notes.push(format!(
                    "`{other}`: no equivalent in llmesh (a LiteLLM proxy feature with no counterpart in the route and budget manifests); not imported"
                )),
            }
        }
        let list = match top.get("model_list") {
            Some(Value::Array(a)) => a.clone(),
            Some(_) => return Err(err("model_list", "expected a list of deployments")),
            None => {
                return Err(err(
                    "model_list",
                    "missing: a LiteLLM config without model_list has no route to import",
                ));
            }
        };
        let router = section(top, "router_settings")?;
        let lset = section(top, "litellm_settings")?;
        let general = section(top, "general_settings")?;
        let settings = self.settings(&router, &lset)?;
        self.general(&general);
        if !self.env_section.is_empty() {
            let names: Vec<&str> = self.env_section.keys().map(String::as_str).collect();
            self.notes.push(format!(
                "`environment_variables` ({}): not copied, values included; set them in the sidecar's environment (standalone) or in the pod spec. Only api_base and api_version references were resolved from them",
                names.join(", ")
            ));
        }

        // Deployments, grouped by model_name in the order groups first appear.
        let mut skipped_groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut groups: Vec<(String, Vec<Deployment>)> = Vec::new();
        for (i, entry) in list.iter().enumerate() {
            match self.deployment(i, entry)? {
                Ok(d) => match groups.iter_mut().find(|(g, _)| *g == d.group) {
                    Some((_, v)) => v.push(d),
                    None => groups.push((d.group.clone(), vec![d])),
                },
                Err((group, why)) => skipped_groups.entry(group).or_default().push(why),
            }
        }
        let mut skipped_notes = Vec::new();
        for (group, whys) in &skipped_groups {
            for why in whys {
                skipped_notes.push(why.clone());
            }
            if !groups.iter().any(|(g, _)| g == group) {
                skipped_notes.push(format!(
                    "model_name `{group}`: no deployment llmesh can serve, so no route; clients asking for it get 404 model_not_found"
                ));
            }
        }
        if groups.is_empty() {
            return Err(err(
                "model_list",
                format!(
                    "no deployment llmesh can serve: {}",
                    skipped_notes.join("; ")
                ),
            ));
        }

        // Route names: DNS names, unique.
        let mut route_names: Vec<String> = Vec::new();
        for (group, _) in &groups {
            let base = dns_name(group);
            route_names.push(unique(&base, &route_names, 253));
        }
        let route_of =
            |group: &str| -> Option<usize> { groups.iter().position(|(g, _)| g == group) };

        for (alias, target) in &settings.aliases {
            if route_of(alias).is_some() {
                self.notes.push(format!(
                    "router_settings.model_group_alias `{alias}`: `{alias}` is a model_name of its own, whose route keeps the name"
                ));
            } else if route_of(target).is_none() {
                self.notes.push(format!(
                    "router_settings.model_group_alias `{alias}` -> `{target}`: `{target}` is not an imported model_name, so there is no alias"
                ));
            }
        }

        let mut out = String::new();
        let mut route_texts = Vec::new();
        // For error messages: route name -> (model_name, backend index -> model_list index).
        let mut origin: BTreeMap<String, (String, Vec<usize>)> = BTreeMap::new();
        for (ri, (group, deps)) in groups.iter().enumerate() {
            let mut notes: Vec<String> = Vec::new();
            let route_name = &route_names[ri];
            // Fallback groups: `fallbacks` (or the defaults), then `context_window_fallbacks`.
            let mut fb_groups: Vec<(String, &'static str)> = Vec::new();
            let explicit: Vec<&String> = settings
                .fallbacks
                .iter()
                .filter(|(g, _)| g == group)
                .flat_map(|(_, v)| v)
                .collect();
            let general_fb: Vec<&String> = if explicit.is_empty() {
                settings.default_fallbacks.iter().collect()
            } else {
                explicit
            };
            for g in general_fb {
                fb_groups.push((g.clone(), "fallbacks"));
            }
            for (g, v) in &settings.context_window_fallbacks {
                if g == group {
                    for f in v {
                        fb_groups.push((f.clone(), "context_window_fallbacks"));
                    }
                }
            }
            let mut backends: Vec<BackendSpec> = Vec::new();
            let mut names: Vec<String> = Vec::new();
            let mut from_list: Vec<usize> = Vec::new();
            for d in deps {
                let name = unique(&d.base_name, &names, 63);
                names.push(name.clone());
                let mut b = d.backend.clone();
                b.name = name;
                backends.push(b);
                from_list.push(d.index);
                notes.extend(d.notes.iter().cloned());
            }
            let own = backends.len();
            let mut fallback_names: Vec<String> = names.clone();
            let mut seen_groups: BTreeSet<&str> = BTreeSet::new();
            for (g, why) in &fb_groups {
                if g == group || !seen_groups.insert(g.as_str()) {
                    continue;
                }
                let Some(gi) = route_of(g) else {
                    notes.push(format!(
                        "{why}: `{group}` -> `{g}`: `{g}` is not a model_name llmesh imported, so it is not a fallback"
                    ));
                    continue;
                };
                for d in &groups[gi].1 {
                    let base = format!("{}.{}", route_names[gi], d.base_name);
                    let name = unique(&trim_name(&base, 63), &names, 63);
                    names.push(name.clone());
                    fallback_names.push(name.clone());
                    let mut b = d.backend.clone();
                    b.name = name;
                    backends.push(b);
                    from_list.push(d.index);
                }
                notes.push(format!(
                    "{why}: `{group}` -> `{g}`: the deployments of `{g}` are backends with weight 0 (never chosen first), tried after this group's own"
                ));
                if *why == "context_window_fallbacks" {
                    notes.push(format!(
                        "context_window_fallbacks `{g}`: llmesh has one fallback list for every error, so `{g}` is also tried after other failures; set contextWindow on the backends to have requests that cannot fit skip the small ones"
                    ));
                }
            }

            // Weights, as simple-shuffle picks: `weight`, else the first deployment's `rpm`,
            // else its `tpm`, else equal.
            let weights = shuffle_weights(deps, &mut notes);
            let need_weights = own > 1 || weights.is_some() && backends.len() > own;
            if need_weights {
                let w = weights.unwrap_or_else(|| vec![1; own]);
                for (i, b) in backends.iter_mut().enumerate() {
                    b.weight = Some(if i < own { w[i] } else { 0 });
                }
            }

            let mut spec = LLMRouteSpec {
                backends,
                ..LLMRouteSpec::default()
            };
            if route_name != group {
                spec.aliases.push(group.clone());
            }
            for (alias, target) in &settings.aliases {
                if target == group && alias != group && route_of(alias).is_none() {
                    spec.aliases.push(alias.clone());
                    notes.push(format!(
                        "router_settings.model_group_alias `{alias}`: an alias of this route"
                    ));
                }
            }
            if spec.backends.len() > 1 {
                spec.fallbacks = Some(fallback_names);
            }

            // Strategy.
            if let Some((text, s)) = &settings.strategy {
                if *s != Strategy::Weighted && spec.backends.len() > own {
                    notes.push(format!(
                        "router_settings.routing_strategy `{text}`: llmesh's {} strategy would also pick the fallback groups' backends first, so this route keeps the weighted split (the fallbacks stay fallbacks)",
                        s_name(*s)
                    ));
                } else if *s != Strategy::Weighted {
                    spec.strategy = Some(*s);
                }
                if text.starts_with("usage-based-routing") {
                    let rpm: Option<f64> = deps.iter().map(|d| d.rpm).sum();
                    let tpm: Option<f64> = deps.iter().map(|d| d.tpm).sum();
                    if rpm.is_some() || tpm.is_some() {
                        spec.limits = Some(LimitsSpec {
                            requests_per_minute: rpm
                                .map(|v| v.round().clamp(1.0, u32::MAX as f64) as u32),
                            tokens_per_minute: tpm.map(|v| v.round().max(1.0) as u64),
                            ..LimitsSpec::default()
                        });
                        notes.push(format!(
                            "routing_strategy `{text}`: the deployments' summed rpm/tpm are this route's limits (in a cluster each sidecar takes an equal share of them; no shared Redis)"
                        ));
                    }
                }
            }

            // Retries.
            let retries = settings.num_retries.unwrap_or(LITELLM_DEFAULT_RETRIES);
            let attempts = (retries + 1).min(10) as u32;
            if retries + 1 > 10 {
                notes.push(format!(
                    "num_retries {retries}: llmesh tries a backend at most 10 times"
                ));
            }
            spec.retry = Some(RetrySpec {
                attempts: Some(attempts),
                ..RetrySpec::default()
            });

            // Timeouts: one per route, the longest of the deployments'.
            let t = max_of(deps.iter().map(|d| d.timeout.or(settings.timeout)));
            let s = max_of(
                deps.iter()
                    .map(|d| d.stream_timeout.or(settings.stream_timeout)),
            );
            if differ(deps.iter().map(|d| d.timeout.or(settings.timeout)))
                || differ(
                    deps.iter()
                        .map(|d| d.stream_timeout.or(settings.stream_timeout)),
                )
            {
                notes.push(
                    "timeout/stream_timeout differ between deployments: llmesh's timeouts are per route, so the longest applies to all".into(),
                );
            }
            if t.is_some() || s.is_some() {
                let mut ts = TimeoutSpec::default();
                if let Some(t) = t {
                    ts.attempt = Some(secs(t));
                    // A non-streaming answer's headers come when it is complete.
                    ts.first_token = Some(secs(t.max(s.unwrap_or(0.0))));
                    let total = t * f64::from(attempts) * spec.backends.len() as f64;
                    if total > LLMESH_DEFAULT_TOTAL_SECS {
                        ts.total = Some(secs(total));
                    }
                } else if let Some(s) = s {
                    ts.first_token = Some(secs(s));
                }
                if let Some(s) = s.or(t) {
                    ts.stream_idle = Some(secs(s));
                }
                if let (Some(t), Some(s)) = (t, s)
                    && s < t
                {
                    notes.push(format!(
                        "stream_timeout {}: LiteLLM bounds a stream's first chunk with it; llmesh's firstToken also bounds a non-streaming answer (whose headers come when it is complete), so firstToken is timeout ({}) and stream_timeout bounds the silence between chunks (streamIdle)",
                        secs(s),
                        secs(t)
                    ));
                }
                spec.timeouts = Some(ts);
            }

            // Cooldowns.
            if settings.allowed_fails.is_some() || settings.cooldown_time.is_some() {
                spec.circuit_breaker = Some(CircuitBreakerSpec {
                    consecutive_failures: settings
                        .allowed_fails
                        .map(|n| (n + 1).min(u64::from(u32::MAX)) as u32),
                    cooldown: settings.cooldown_time.map(secs),
                });
            }
            spec.cache = settings.cache.clone();

            let mut text = String::new();
            let deployments = deps
                .iter()
                .map(|d| format!("model_list[{}]", d.index))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(text, "# model_name `{group}` ({deployments})");
            for n in &notes {
                let _ = writeln!(text, "# - {n}");
            }
            text.push_str(&to_yaml(&Object {
                api_version: API_VERSION,
                kind: "LLMRoute",
                metadata: Metadata { name: route_name },
                spec: &spec,
            })?);
            route_texts.push(text);
            origin.insert(route_name.clone(), (group.clone(), from_list));
        }

        let mut budget_texts = Vec::new();
        for (name, spec, notes) in self.budgets(&lset)? {
            let mut text = String::new();
            for n in &notes {
                let _ = writeln!(text, "# {n}");
            }
            text.push_str(&to_yaml(&Object {
                api_version: API_VERSION,
                kind: "LLMBudget",
                metadata: Metadata { name: &name },
                spec: &spec,
            })?);
            budget_texts.push(text);
        }

        // Header.
        let _ = writeln!(
            out,
            "# LLMRoute and LLMBudget manifests imported from the LiteLLM config {source_name}"
        );
        let _ = writeln!(
            out,
            "# by `llmesh-sidecar import litellm`. Standalone: llmesh-sidecar --config THIS_FILE; in a cluster: kubectl apply -f."
        );
        if !self.key_vars.is_empty() {
            let vars: Vec<&str> = self.key_vars.iter().map(String::as_str).collect();
            let _ = writeln!(
                out,
                "# Provider keys (standalone) come from the environment variables {}.",
                vars.join(", ")
            );
        }
        for n in self.notes.iter().chain(&skipped_notes) {
            let _ = writeln!(out, "# - {n}");
        }
        for t in route_texts.iter().chain(&budget_texts) {
            out.push_str("---\n");
            out.push_str(t);
        }
        if !self.stubs.is_empty() {
            out.push_str(
                "# Secret stubs for a cluster: fill in each key, save as secrets.yaml and `kubectl apply -f secrets.yaml`\n",
            );
            out.push_str(
                "# (a standalone sidecar reads the environment variable named instead, or takes the file with --secrets).\n",
            );
            for ((name, key), var) in &self.stubs {
                out.push_str("# ---\n# apiVersion: v1\n# kind: Secret\n");
                let _ = writeln!(out, "# metadata: {{name: {name}}}");
                let _ = writeln!(out, "# stringData: {{{key}: \"<the value of {var}>\"}}");
            }
        }

        self.validate(source_name, &out, &origin)?;
        Ok(out)
    }

    /// Compiles the output as `--config` would, with a placeholder for every key.
    fn validate(
        &self,
        source_name: &str,
        text: &str,
        origin: &BTreeMap<String, (String, Vec<usize>)>,
    ) -> Result<(), ImportError> {
        struct Placeholder;
        impl SecretSource for Placeholder {
            fn get(&self, _: &str, _: &SecretKeyRef) -> Result<String, String> {
                Ok("placeholder".into())
            }
        }
        let fail = |e: String| {
            // Name the LiteLLM setting: the model_name, and the model_list entry of a backend.
            let mut setting = source_name.to_string();
            for (route, (group, list)) in origin {
                if e.contains(&format!("LLMRoute default/{route}:")) {
                    setting = format!("model_name `{group}`");
                    for (i, li) in list.iter().enumerate() {
                        if e.contains(&format!("spec.backends[{i}]")) {
                            setting = format!("model_list[{li}] (model_name `{group}`)");
                        }
                    }
                }
            }
            err(
                setting,
                format!(
                    "the imported manifests would not load (an importer bug or a value llmesh refuses): {e}"
                ),
            )
        };
        let manifests =
            manifest::parse("imported", text, false).map_err(|e| fail(e.to_string()))?;
        manifest::compile("imported", &manifests, &Placeholder).map_err(|e| fail(e.to_string()))?;
        Ok(())
    }

    /// Resolves the settings `router_settings` and `litellm_settings` share (router first).
    fn settings(
        &mut self,
        router: &Map<String, Value>,
        lset: &Map<String, Value>,
    ) -> Result<Settings, ImportError> {
        let mut s = Settings::default();
        for (key, v) in router {
            let at = format!("router_settings.{key}");
            match key.as_str() {
                "num_retries" => s.num_retries = Some(uint(&at, v)?),
                "timeout" => s.timeout = Some(seconds(&at, v)?),
                "stream_timeout" => s.stream_timeout = Some(seconds(&at, v)?),
                "allowed_fails" => {
                    let n = uint(&at, v)?;
                    s.allowed_fails = Some(n);
                    self.notes.push(format!(
                        "{at} {n}: LiteLLM cools a deployment down after more than {n} failures in a minute; llmesh opens its circuit after {} consecutive failures (circuitBreaker.consecutiveFailures)",
                        n + 1
                    ));
                }
                "cooldown_time" => s.cooldown_time = Some(seconds(&at, v)?),
                "routing_strategy" => {
                    let text = v.as_str().unwrap_or_default().to_string();
                    let strategy = match text.as_str() {
                        "simple-shuffle" => Strategy::Weighted,
                        "least-busy" => Strategy::LeastBusy,
                        "latency-based-routing" => Strategy::Latency,
                        "cost-based-routing" => Strategy::Cost,
                        "usage-based-routing" | "usage-based-routing-v2" => {
                            self.notes.push(format!(
                                "{at} `{text}`: llmesh does not pick by TPM/RPM used; routes keep the weighted split (by rpm/tpm, as simple-shuffle weighs them) and the summed rpm/tpm become route limits"
                            ));
                            Strategy::Weighted
                        }
                        other => {
                            return Err(err(
                                at,
                                format!(
                                    "`{other}` is not a LiteLLM routing strategy llmesh knows (simple-shuffle, least-busy, latency-based-routing, cost-based-routing, usage-based-routing)"
                                ),
                            ));
                        }
                    };
                    s.strategy = Some((text, strategy));
                }
                "fallbacks" => s.fallbacks.extend(fallback_map(&at, v)?),
                "context_window_fallbacks" => {
                    s.context_window_fallbacks.extend(fallback_map(&at, v)?)
                }
                "content_policy_fallbacks" => {
                    self.notes.push(format!(
                        "{at}: llmesh falls back on a content-policy refusal like on any other failure, along the route's fallbacks, so these groups are added as fallbacks"
                    ));
                    s.fallbacks.extend(fallback_map(&at, v)?)
                }
                "default_fallbacks" => s.default_fallbacks = string_list(&at, v)?,
                "model_group_alias" => {
                    let Value::Object(m) = v else {
                        return Err(err(at, "expected a mapping of alias to model_name"));
                    };
                    for (alias, target) in m {
                        let target = match target {
                            Value::String(t) => t.clone(),
                            Value::Object(o) => {
                                if o.get("hidden").and_then(Value::as_bool) == Some(true) {
                                    self.notes.push(format!(
                                        "{at}.{alias}.hidden: llmesh lists every alias in /v1/models; hiding one has no equivalent"
                                    ));
                                }
                                o.get("model")
                                    .and_then(Value::as_str)
                                    .unwrap_or_default()
                                    .to_string()
                            }
                            _ => String::new(),
                        };
                        s.aliases.push((alias.clone(), target));
                    }
                }
                "redis_host" | "redis_port" | "redis_password" | "redis_url" => self.notes.push(format!(
                    "{at}: no equivalent: LiteLLM shares cooldowns and usage across instances in Redis; each llmesh sidecar keeps its own circuit breakers and limits, and the operator pushes config to all of them (value not copied)"
                )),
                "routing_strategy_args" => self.notes.push(format!(
                    "{at}: no equivalent: llmesh's latency strategy keeps an EWMA of time to first byte (weight 1/4) with no ttl or buffer to set"
                )),
                "enable_pre_call_checks" => self.notes.push(format!(
                    "{at}: llmesh always checks a request against a backend's contextWindow when one is set (from model_info.max_input_tokens); nothing to enable"
                )),
                "retry_policy" | "allowed_fails_policy" => self.notes.push(format!(
                    "{at}: no equivalent: llmesh's retries and circuit breaker do not vary by error type; 429, 5xx, timeouts and connect errors are retried, 401/403/404 take the backend out at once"
                )),
                "retry_after" => self.notes.push(format!(
                    "{at}: llmesh waits an exponential backoff from 200ms (retry.backoff) and honours the provider's retry-after up to 10s (retry.maxRetryAfter)"
                )),
                "max_fallbacks" => self.notes.push(format!(
                    "{at}: llmesh tries every backend in a route's fallbacks once, within timeouts.total"
                )),
                other => self.notes.push(format!(
                    "router_settings.{other}: no equivalent in llmesh; not imported"
                )),
            }
        }
        for (key, v) in lset {
            let at = format!("litellm_settings.{key}");
            match key.as_str() {
                "num_retries" => {
                    let n = uint(&at, v)?;
                    if s.num_retries.is_none() {
                        s.num_retries = Some(n);
                    } else {
                        self.notes.push(format!(
                            "{at}: router_settings.num_retries takes precedence, as in LiteLLM's router"
                        ));
                    }
                }
                "request_timeout" => {
                    let t = seconds(&at, v)?;
                    if s.timeout.is_none() {
                        s.timeout = Some(t);
                    }
                }
                "fallbacks" => {
                    let f = fallback_map(&at, v)?;
                    for (g, v) in f {
                        if !s.fallbacks.iter().any(|(x, _)| *x == g) {
                            s.fallbacks.push((g, v));
                        }
                    }
                }
                "context_window_fallbacks" => {
                    let f = fallback_map(&at, v)?;
                    for (g, v) in f {
                        if !s.context_window_fallbacks.iter().any(|(x, _)| *x == g) {
                            s.context_window_fallbacks.push((g, v));
                        }
                    }
                }
                "default_fallbacks" => {
                    if s.default_fallbacks.is_empty() {
                        s.default_fallbacks = string_list(&at, v)?;
                    }
                }
                "cache" => {
                    if v.as_bool() == Some(true) {
                        s.cache = self.cache(lset.get("cache_params"));
                    }
                }
                "cache_params" => {
                    if lset.get("cache").and_then(Value::as_bool) != Some(true) {
                        self.notes.push(format!(
                            "{at}: `cache` is not true, so no cache is set up (as in LiteLLM)"
                        ));
                    }
                }
                "max_budget" | "budget_duration" | "max_end_user_budget" => {}
                "allowed_fails" => {
                    let n = uint(&at, v)?;
                    if s.allowed_fails.is_none() {
                        s.allowed_fails = Some(n);
                        self.notes.push(format!(
                            "{at} {n}: LiteLLM cools a deployment down after more than {n} failures in a minute; llmesh opens its circuit after {} consecutive failures (circuitBreaker.consecutiveFailures)",
                            n + 1
                        ));
                    }
                }
                "cooldown_time" => {
                    let t = seconds(&at, v)?;
                    if s.cooldown_time.is_none() {
                        s.cooldown_time = Some(t);
                    }
                }
                "drop_params" | "modify_params" => self.notes.push(format!(
                    "{at}: no equivalent: llmesh sends the client's parameters through (translating them for Anthropic and Gemini); it does not drop ones a provider refuses"
                )),
                "set_verbose" | "json_logs" => self.notes.push(format!(
                    "{at}: llmesh's logs are set with LLMESH_LOG (error..trace) and --log-format text|json"
                )),
                "success_callback" | "failure_callback" | "callbacks" | "service_callback" => {
                    self.notes.push(format!(
                        "{at}: no callbacks in llmesh: each request is in the JSON access log (--access-log) and the Prometheus metrics at /metrics (tokens, cost, latency, errors)"
                    ))
                }
                other => self.notes.push(format!(
                    "litellm_settings.{other}: no equivalent in llmesh; not imported"
                )),
            }
        }
        if s.num_retries.is_none() {
            self.notes.push(format!(
                "num_retries is not set: LiteLLM's router then retries {LITELLM_DEFAULT_RETRIES} times, so each route's retry.attempts is {}",
                LITELLM_DEFAULT_RETRIES + 1
            ));
        }
        Ok(s)
    }

    fn cache(&mut self, params: Option<&Value>) -> Option<CacheSpec> {
        let empty = Map::new();
        let p = params.and_then(Value::as_object).unwrap_or(&empty);
        let kind = p.get("type").and_then(Value::as_str).unwrap_or("local");
        let mut spec = CacheSpec {
            enabled: true,
            ..CacheSpec::default()
        };
        for (key, v) in p {
            let at = format!("litellm_settings.cache_params.{key}");
            match key.as_str() {
                "type" => match kind {
                    "local" => {}
                    "redis" => self.notes.push(format!(
                        "{at} redis: llmesh's cache is an exact-match cache in each sidecar's memory, not shared through Redis: each sidecar (one per pod) fills its own"
                    )),
                    "redis-semantic" | "qdrant-semantic" | "valkey-semantic" => self.notes.push(format!(
                        "{at} {kind}: no semantic cache in llmesh; the exact-match cache answers identical requests only"
                    )),
                    other => self.notes.push(format!(
                        "{at} {other}: llmesh's cache lives in each sidecar's memory; there is no {other} store"
                    )),
                },
                "ttl" | "default_in_memory_ttl" | "default_in_redis_ttl" => {
                    if let Some(t) = v.as_f64().filter(|t| *t > 0.0) {
                        spec.ttl = Some(secs(t));
                    }
                }
                "mode" if v.as_str() == Some("default_off") => {
                    self.notes.push(format!(
                        "{at} default_off: LiteLLM caches only requests that opt in; llmesh's cache is per route with no per-request opt-in, so it is left off"
                    ));
                    return None;
                }
                "supported_call_types" => self.notes.push(format!(
                    "{at}: llmesh caches non-streaming chat completions, completions and embeddings"
                )),
                "host" | "port" | "password" | "url" | "namespace" | "redis_startup_nodes"
                | "service_name" | "sentinel_nodes" | "s3_bucket_name" | "s3_region_name"
                | "gcs_bucket_name" | "disk_cache_dir" | "similarity_threshold"
                | "qdrant_api_base" | "qdrant_api_key" | "redis_semantic_cache_embedding_model"
                | "max_connections" | "socket_timeout" => self.notes.push(format!(
                    "{at}: no equivalent (the cache is in the sidecar's memory); value not copied"
                )),
                other => self.notes.push(format!(
                    "litellm_settings.cache_params.{other}: no equivalent in llmesh; not imported"
                )),
            }
        }
        if spec.ttl.is_none() {
            self.notes.push(
                "litellm_settings.cache: no ttl in the LiteLLM config, so llmesh's default ttl (5m) applies".into(),
            );
        }
        self.notes.push(
            "litellm_settings.cache: every route gets an exact-match cache of non-streaming answers (streams are not cached)".into(),
        );
        Some(spec)
    }

    fn general(&mut self, general: &Map<String, Value>) {
        for (key, v) in general {
            let at = format!("general_settings.{key}");
            match key.as_str() {
                "master_key" => {
                    let how = match v.as_str().and_then(env_ref) {
                        Some(var) => format!("run the sidecar with --api-keys-env {var} to require it from clients"),
                        None => "the literal key is not copied: put it in an environment variable and run the sidecar with --api-keys-env VAR".into(),
                    };
                    self.notes.push(format!(
                        "{at}: not a route setting. A sidecar on loopback (the default, and in a pod) serves only its own pod and needs no client key; {how}"
                    ));
                }
                "database_url" => self.notes.push(format!(
                    "{at}: no equivalent: llmesh keeps no database. LiteLLM stores virtual keys, teams and spend logs there; in llmesh budgets are LLMBudget objects, spend is counted by the sidecars (and the operator in a cluster), and per-request records go to the access log and metrics (value not copied)"
                )),
                "store_model_in_db" => self.notes.push(format!(
                    "{at}: no equivalent: routes are Kubernetes objects (kubectl apply) or the --config file, which the sidecar reloads on change"
                )),
                "alerting" | "alerting_threshold" | "alert_types" => self.notes.push(format!(
                    "{at}: no equivalent: budget alerts are LLMBudget alertThresholds (metric, log and Events); alert on the Prometheus metrics for the rest"
                )),
                other => self.notes.push(format!(
                    "general_settings.{other}: no equivalent in llmesh (a LiteLLM proxy server setting); not imported"
                )),
            }
        }
    }

    fn budgets(
        &mut self,
        lset: &Map<String, Value>,
    ) -> Result<Vec<(String, LLMBudgetSpec, Vec<String>)>, ImportError> {
        let mut out = Vec::new();
        if let Some(v) = lset.get("max_budget") {
            let at = "litellm_settings.max_budget";
            let usd = money(at, v)?;
            let duration = lset.get("budget_duration").and_then(Value::as_str);
            let (period, limit, note) = budget_period(usd, duration)
                .map_err(|m| err("litellm_settings.budget_duration", m))?;
            let mut notes = vec![format!(
                "litellm_settings.max_budget {} with budget_duration {}: one budget over every route",
                format_usd(usd),
                duration.unwrap_or("(none)")
            )];
            notes.extend(note);
            out.push((
                "litellm-max-budget".to_string(),
                LLMBudgetSpec {
                    limit: BudgetLimit {
                        usd: Some(format_usd(limit)),
                        tokens: None,
                    },
                    period: Some(period),
                    ..LLMBudgetSpec::default()
                },
                notes,
            ));
        }
        if let Some(v) = lset.get("max_end_user_budget") {
            let at = "litellm_settings.max_end_user_budget";
            let usd = money(at, v)?;
            out.push((
                "litellm-end-user-budget".to_string(),
                LLMBudgetSpec {
                    per_user: Some(true),
                    limit: BudgetLimit {
                        usd: Some(format_usd(usd)),
                        tokens: None,
                    },
                    period: Some(BudgetPeriod::Month),
                    ..LLMBudgetSpec::default()
                },
                vec![
                    format!("{at} {}: a budget per end user (the request's `user`, or the x-llmesh-user header)", format_usd(usd)),
                    "LiteLLM's end-user budget has no period of its own; llmesh budgets reset each calendar period, here month".into(),
                ],
            ));
        }
        Ok(out)
    }

    /// One `model_list` entry: `Ok(Err((group, why)))` when llmesh cannot serve it.
    #[allow(clippy::type_complexity)]
    fn deployment(
        &mut self,
        i: usize,
        entry: &Value,
    ) -> Result<Result<Deployment, (String, String)>, ImportError> {
        let at = format!("model_list[{i}]");
        let Value::Object(entry) = entry else {
            return Err(err(
                at,
                "expected a mapping with model_name and litellm_params",
            ));
        };
        let group = match entry.get("model_name") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(err(format!("{at}.model_name"), "missing or not text")),
        };
        let empty = Map::new();
        let params = entry
            .get("litellm_params")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let info = entry
            .get("model_info")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let Some(model) = params.get("model").and_then(Value::as_str) else {
            return Err(err(
                format!("{at}.litellm_params.model"),
                "missing: every deployment names its model, like openai/gpt-4o",
            ));
        };
        if group.contains('*') || model.contains('*') {
            return Ok(Err((
                group.clone(),
                format!(
                    "{at} (model_name `{group}`, model `{model}`): wildcard routing has no equivalent: an llmesh route serves the model names it lists; add one route per model (or set allowModelPinning on a route to let clients pin provider/model ids)"
                ),
            )));
        }
        let custom = params.get("custom_llm_provider").and_then(Value::as_str);
        let (prefix, rest) = match (custom, model.split_once('/')) {
            (Some(p), _) => (
                Some(p),
                model
                    .strip_prefix(p)
                    .and_then(|r| r.strip_prefix('/'))
                    .unwrap_or(model),
            ),
            (None, Some((p, r))) => (Some(p), r),
            (None, None) => (None, model),
        };
        let api_base = match params.get("api_base").or_else(|| params.get("base_url")) {
            Some(v) => Some(self.resolve(&format!("{at}.litellm_params.api_base"), v)?),
            None => None,
        };
        let mut notes = Vec::new();
        let provider = match prefix {
            Some("openai")
            | Some("custom_openai")
            | Some("litellm_proxy")
            | Some("openai_like") => {
                let public = api_base
                    .as_deref()
                    .is_none_or(|b| b.trim_end_matches('/') == "https://api.openai.com/v1");
                if public && prefix == Some("openai") {
                    ProviderKind::Openai
                } else {
                    ProviderKind::OpenaiCompatible
                }
            }
            Some("azure") => ProviderKind::Azure,
            Some("anthropic") => ProviderKind::Anthropic,
            Some("gemini") => ProviderKind::Gemini,
            Some("openrouter") => ProviderKind::Openrouter,
            Some("hosted_vllm") => ProviderKind::Vllm,
            Some("ollama") | Some("ollama_chat") => ProviderKind::Ollama,
            Some("groq") => ProviderKind::Groq,
            Some("mistral") => ProviderKind::Mistral,
            Some("deepseek") => ProviderKind::Deepseek,
            Some("together_ai") => ProviderKind::Together,
            Some(other) => {
                return Ok(Err((
                    group.clone(),
                    format!(
                        "{at} (model_name `{group}`, model `{model}`): llmesh has no `{other}` provider (it speaks OpenAI, Azure OpenAI, Anthropic, Gemini and OpenAI-compatible servers); not imported"
                    ),
                )));
            }
            None => match bare_provider(model) {
                Some((p, note)) => {
                    if let Some(n) = note {
                        notes.push(format!("{at} `{model}`: {n}"));
                    }
                    p
                }
                None => {
                    return Ok(Err((
                        group.clone(),
                        format!(
                            "{at} (model_name `{group}`, model `{model}`): no provider prefix, and the name is not one whose provider llmesh can tell; write it as provider/model (openai/, anthropic/, ...)"
                        ),
                    )));
                }
            },
        };
        let mut backend = BackendSpec {
            provider,
            model: rest.to_string(),
            ..BackendSpec::default()
        };
        let mut base_name = rest.rsplit('/').next().unwrap_or(rest).to_string();

        // Base URL, as llmesh writes it (up to and including the version prefix).
        let base = api_base.map(|b| b.trim_end_matches('/').to_string());
        backend.base_url = match provider {
            ProviderKind::Azure => {
                let b = match base {
                    Some(b) => b,
                    None => self.lookup("AZURE_API_BASE").ok_or_else(|| {
                        err(
                            format!("{at}.litellm_params.api_base"),
                            "missing, and AZURE_API_BASE is not set: an Azure deployment needs its endpoint",
                        )
                    })?,
                };
                let b = b.trim_end_matches('/');
                Some(if b.ends_with("/openai") {
                    b.to_string()
                } else {
                    format!("{b}/openai")
                })
            }
            ProviderKind::Anthropic => base.map(|b| {
                let b = b.trim_end_matches("/messages").to_string();
                if b.ends_with("/v1") {
                    b
                } else {
                    format!("{b}/v1")
                }
            }),
            ProviderKind::Gemini => base.map(|b| {
                if b.ends_with("/v1beta") || b.ends_with("/v1") {
                    b
                } else {
                    format!("{b}/v1beta")
                }
            }),
            ProviderKind::Ollama => base.map(|b| {
                if b.ends_with("/v1") {
                    b
                } else {
                    format!("{b}/v1")
                }
            }),
            ProviderKind::Openai => None,
            _ => base,
        };
        if provider == ProviderKind::OpenaiCompatible && backend.base_url.is_none() {
            return Err(err(
                format!("{at}.litellm_params.api_base"),
                format!("`{model}` needs api_base: llmesh must know the server's URL"),
            ));
        }
        if provider == ProviderKind::Azure {
            let model_for_price = info
                .get("base_model")
                .and_then(Value::as_str)
                .map(|m| m.strip_prefix("azure/").unwrap_or(m).to_string());
            let version = match params.get("api_version") {
                Some(v) => Some(self.resolve(&format!("{at}.litellm_params.api_version"), v)?),
                None => self.lookup("AZURE_API_VERSION"),
            };
            backend.azure = Some(AzureSpec {
                deployment: rest.to_string(),
                api_version: version,
            });
            if let Some(m) = model_for_price {
                backend.model = m;
            } else {
                notes.push(format!(
                    "{at} azure/{rest}: model is the deployment name; set model_info.base_model (or the backend's model) to the underlying model so costs are priced"
                ));
            }
            base_name = rest.to_string();
        }

        // The key.
        let default_var = match provider {
            ProviderKind::Openai => Some("OPENAI_API_KEY"),
            ProviderKind::Azure => Some("AZURE_API_KEY"),
            ProviderKind::Anthropic => Some("ANTHROPIC_API_KEY"),
            ProviderKind::Gemini => Some("GEMINI_API_KEY"),
            ProviderKind::Openrouter => Some("OPENROUTER_API_KEY"),
            ProviderKind::Groq => Some("GROQ_API_KEY"),
            ProviderKind::Mistral => Some("MISTRAL_API_KEY"),
            ProviderKind::Deepseek => Some("DEEPSEEK_API_KEY"),
            ProviderKind::Together => Some("TOGETHERAI_API_KEY"),
            _ => None,
        };
        let key_at = format!("{at}.litellm_params.api_key");
        match params.get("api_key") {
            Some(Value::String(k)) if env_ref(k).is_some() => {
                let var = env_ref(k).unwrap_or_default();
                backend.secret_ref = Some(self.secret_for(&key_at, &var)?);
            }
            Some(Value::String(k))
                if (k.trim().is_empty() || k.trim().eq_ignore_ascii_case("none"))
                    && !provider.needs_key() =>
            {
                notes.push(format!(
                    "{key_at}: a placeholder, not a key: this backend sends no key"
                ));
            }
            Some(_) => {
                let var = format!(
                    "{}_API_KEY",
                    dns_name(&format!("litellm-{group}-{base_name}"))
                        .to_ascii_uppercase()
                        .replace(['-', '.'], "_")
                );
                backend.secret_ref = Some(self.secret_for(&key_at, &var)?);
                notes.push(format!(
                    "{key_at}: a literal key in the LiteLLM config; it is not copied: export {var}=<the key> (or fill in the Secret stub below)"
                ));
            }
            None => {
                if let Some(var) = default_var {
                    backend.secret_ref = Some(self.secret_for(&key_at, var)?);
                    notes.push(format!(
                        "{at}: no api_key, so LiteLLM reads {var}; so does this backend"
                    ));
                } else if provider == ProviderKind::OpenaiCompatible {
                    notes.push(format!(
                        "{at}: no api_key: LiteLLM would send OPENAI_API_KEY if set; this backend sends no key (add a secretRef if the server needs one)"
                    ));
                }
            }
        }

        // Prices and context window.
        let cost = |k: &str| {
            params
                .get(k)
                .or_else(|| info.get(k))
                .and_then(Value::as_f64)
                .map(per_million)
        };
        let (input, output) = (cost("input_cost_per_token"), cost("output_cost_per_token"));
        if input.is_some() || output.is_some() {
            backend.prices = Some(PriceSpec {
                input,
                output,
                ..PriceSpec::default()
            });
        }
        backend.context_window = info
            .get("max_input_tokens")
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n > 0);

        let mut d = Deployment {
            index: i,
            group: group.clone(),
            backend,
            base_name: trim_name(&backend_name(&base_name), 50),
            weight: None,
            rpm: None,
            tpm: None,
            timeout: None,
            stream_timeout: None,
            notes,
        };
        // `rpm` and `tpm` may sit beside litellm_params too (older configs).
        for (key, v) in params.iter().chain(
            entry
                .iter()
                .filter(|(k, _)| matches!(k.as_str(), "rpm" | "tpm")),
        ) {
            let at = format!("{at}.litellm_params.{key}");
            match key.as_str() {
                "model" | "api_base" | "base_url" | "api_key" | "api_version"
                | "custom_llm_provider" | "input_cost_per_token" | "output_cost_per_token" => {}
                "weight" => d.weight = Some(number(&at, v)?),
                "rpm" => d.rpm = Some(number(&at, v)?),
                "tpm" => d.tpm = Some(number(&at, v)?),
                "timeout" => d.timeout = Some(seconds(&at, v)?),
                "stream_timeout" => d.stream_timeout = Some(seconds(&at, v)?),
                "max_retries" => d.notes.push(format!(
                    "{at}: llmesh's retries are per route (retry.attempts, from num_retries), not per deployment"
                )),
                "order" => d.notes.push(format!(
                    "{at}: no equivalent of priority order within a group; use weights, or weight 0 for a backend that should only take fallbacks"
                )),
                "organization" | "extra_headers" => d.notes.push(format!(
                    "{at}: not imported; set the backend's headers if the provider needs one (headers that carry credentials are refused)"
                )),
                other if looks_secret(other) => d.notes.push(format!(
                    "{at}: no equivalent in llmesh (value not copied)"
                )),
                _ => d.notes.push(format!(
                    "{at}: no equivalent: llmesh sends the client's request parameters unchanged (set defaults in the client; limits.defaultMaxTokens covers max_tokens)"
                )),
            }
        }
        for key in info.keys() {
            if !matches!(
                key.as_str(),
                "id" | "mode"
                    | "base_model"
                    | "max_input_tokens"
                    | "input_cost_per_token"
                    | "output_cost_per_token"
            ) {
                d.notes.push(format!(
                    "{at}.model_info.{key}: informational in LiteLLM; not imported"
                ));
            }
        }
        Ok(Ok(d))
    }

    /// A `secretRef` whose standalone environment variable is exactly `var`.
    fn secret_for(&mut self, setting: &str, var: &str) -> Result<SecretKeyRef, ImportError> {
        if var.is_empty()
            || !var
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(err(
                setting,
                format!(
                    "environment variable `{var}`: llmesh reads keys from variables of upper-case letters, digits and `_` (name and key of the secretRef, upper-cased); rename it"
                ),
            ));
        }
        let (name, key) = match var.strip_suffix("_API_KEY") {
            Some(prefix) if !prefix.is_empty() => (prefix, "API_KEY"),
            _ => match var.rsplit_once('_') {
                Some((n, k)) if !n.is_empty() && !k.is_empty() => (n, k),
                _ => {
                    return Err(err(
                        setting,
                        format!(
                            "environment variable `{var}`: llmesh reads a key from NAME_KEY (the secretRef's name and key); use a variable with a `_` in it, like {var}_API_KEY"
                        ),
                    ));
                }
            },
        };
        let r = SecretKeyRef {
            name: name.to_ascii_lowercase().replace('_', "-"),
            key: key.to_ascii_lowercase().replace('_', "-"),
        };
        let dns_ok = llmesh_api::route::SecretKeyRef::env_var(&r) == var
            && r.name
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
            && !r.name.starts_with('-')
            && !r.name.ends_with('-')
            && !r.name.contains("--");
        if !dns_ok {
            return Err(err(
                setting,
                format!(
                    "environment variable `{var}` does not map to a Secret name and key (NAME_KEY, NAME a Kubernetes name once lower-cased with `_` as `-`); rename it"
                ),
            ));
        }
        self.key_vars.insert(var.to_string());
        self.stubs
            .insert((r.name.clone(), r.key.clone()), var.to_string());
        Ok(r)
    }

    /// A value that may be `os.environ/VAR` (api_base, api_version: never keys).
    fn resolve(&self, setting: &str, v: &Value) -> Result<String, ImportError> {
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return Err(err(setting, "expected text")),
        };
        match env_ref(&text) {
            Some(var) => self.lookup(&var).ok_or_else(|| {
                err(
                    setting,
                    format!(
                        "refers to the environment variable {var}, which is neither in environment_variables nor set: set it when importing (the URL goes into the manifest)"
                    ),
                )
            }),
            None => Ok(text),
        }
    }

    fn lookup(&self, var: &str) -> Option<String> {
        let v = match self.env_section.get(var) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => (self.env)(var),
        };
        v.filter(|s| !s.trim().is_empty())
    }
}

/// Weights as LiteLLM's simple-shuffle uses them: `weight` when the first deployment sets one
/// (others default to 0), else `rpm`, else `tpm`; None when all are equal (a plain shuffle).
fn shuffle_weights(deps: &[Deployment], notes: &mut Vec<String>) -> Option<Vec<u32>> {
    let first = deps.first()?;
    let (raw, what): (Vec<f64>, &str) = if first.weight.is_some() {
        (
            deps.iter().map(|d| d.weight.unwrap_or(0.0)).collect(),
            "weight",
        )
    } else if first.rpm.is_some() {
        (deps.iter().map(|d| d.rpm.unwrap_or(0.0)).collect(), "rpm")
    } else if first.tpm.is_some() {
        (deps.iter().map(|d| d.tpm.unwrap_or(0.0)).collect(), "tpm")
    } else {
        if deps.iter().any(|d| d.weight.is_some()) {
            notes.push(
                "weight: LiteLLM reads weights only when the group's first deployment sets one, so the split is even".into(),
            );
        }
        return None;
    };
    if raw.iter().all(|w| *w <= 0.0) {
        notes.push(format!(
            "{what}: every deployment's {what} is 0, so the split is even"
        ));
        return None;
    }
    // Whole numbers up to 1,000,000 with the same ratios.
    let max = raw.iter().cloned().fold(0.0, f64::max);
    let fractional = raw.iter().any(|w| w.fract() != 0.0);
    let scale = if max > 1_000_000.0 {
        1_000_000.0 / max
    } else if fractional {
        (1_000_000.0 / max).min(1000.0)
    } else {
        1.0
    };
    let w: Vec<u32> = raw
        .iter()
        .map(|w| {
            let v = (w.max(0.0) * scale).round() as u32;
            if *w > 0.0 { v.max(1) } else { 0 }
        })
        .collect();
    if what != "weight" && deps.len() > 1 {
        notes.push(format!(
            "{what}: LiteLLM's simple-shuffle splits traffic in proportion to it, and so do these weights; llmesh does not cap a backend at its {what}"
        ));
    }
    if deps.len() == 1 {
        return None;
    }
    Some(w)
}

fn section(top: &Map<String, Value>, key: &str) -> Result<Map<String, Value>, ImportError> {
    match top.get(key) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(_) => Err(err(key, "expected a mapping")),
    }
}

/// `[{group: [fallback, ...]}, ...]` (or one mapping) into pairs, in order.
fn fallback_map(at: &str, v: &Value) -> Result<Vec<(String, Vec<String>)>, ImportError> {
    let items: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        Value::Object(_) => vec![v],
        Value::Null => vec![],
        _ => {
            return Err(err(at, "expected a list like [{gpt-4o: [claude-sonnet]}]"));
        }
    };
    let mut out = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let Value::Object(m) = item else {
            return Err(err(
                format!("{at}[{i}]"),
                "expected a mapping of model_name to a list of model_names",
            ));
        };
        for (g, list) in m {
            out.push((g.clone(), string_list(&format!("{at}[{i}].{g}"), list)?));
        }
    }
    Ok(out)
}

fn string_list(at: &str, v: &Value) -> Result<Vec<String>, ImportError> {
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(a) => a
            .iter()
            .map(|x| match x {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                _ => Err(err(at, "expected model_names")),
            })
            .collect(),
        _ => Err(err(at, "expected a list of model_names")),
    }
}

fn number(at: &str, v: &Value) -> Result<f64, ImportError> {
    let n: Option<f64> = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    n.filter(|n| n.is_finite() && *n >= 0.0)
        .ok_or_else(|| err(at, "expected a number of at least 0"))
}

fn uint(at: &str, v: &Value) -> Result<u64, ImportError> {
    let n = number(at, v)?;
    if n.fract() != 0.0 {
        return Err(err(at, "expected a whole number"));
    }
    Ok(n as u64)
}

fn seconds(at: &str, v: &Value) -> Result<f64, ImportError> {
    let n = number(at, v)?;
    if n <= 0.0 {
        return Err(err(at, "expected seconds above 0"));
    }
    Ok(n)
}

/// USD as integer micro-dollars.
fn money(at: &str, v: &Value) -> Result<u64, ImportError> {
    let n = number(at, v)?;
    let micro = (n * 1_000_000.0).round();
    if !(1.0..=1e15).contains(&micro) {
        return Err(err(at, "expected USD between 0.000001 and 1,000,000,000"));
    }
    Ok(micro as u64)
}

/// USD per token -> USD per 1M tokens, as a decimal string (rounded to the micro-dollar).
fn per_million(per_token: f64) -> String {
    format_usd((per_token * 1e12).round().max(0.0) as u64)
}

/// Seconds as an llmesh duration (`30s`, `1500ms`).
fn secs(s: f64) -> String {
    let ms = (s * 1000.0).round().max(1.0) as u64;
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

fn max_of(it: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    it.flatten()
        .fold(None, |a, b| Some(a.map_or(b, |a: f64| a.max(b))))
}

fn differ(it: impl Iterator<Item = Option<f64>>) -> bool {
    let v: Vec<Option<f64>> = it.collect();
    v.windows(2).any(|w| w[0] != w[1])
}

/// `budget_duration` -> an llmesh period and the limit per period that never lets more through
/// over LiteLLM's window than `max_budget`.
fn budget_period(
    usd: u64,
    duration: Option<&str>,
) -> Result<(BudgetPeriod, u64, Vec<String>), String> {
    let Some(d) = duration else {
        return Ok((
            BudgetPeriod::Month,
            usd,
            vec!["no budget_duration: LiteLLM's budget never resets; llmesh's reset each calendar period, here month (the longest)".into()],
        ));
    };
    let d = d.trim();
    let split = d
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{d}` has no unit: use s, m, h, d or mo, like 30d"))?;
    let (n, unit) = d.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("`{d}` does not start with a whole number"))?;
    if n == 0 {
        return Err(format!("`{d}` is zero"));
    }
    let hours: f64 = match unit {
        "s" => n as f64 / 3600.0,
        "m" => n as f64 / 60.0,
        "h" => n as f64,
        "d" => n as f64 * 24.0,
        "mo" => n as f64 * 24.0 * 30.0,
        other => {
            return Err(format!(
                "`{d}`: unit `{other}` is not one of s, m, h, d, mo"
            ));
        }
    };
    let exact = match (n, unit) {
        (1, "h") | (60, "m") | (3600, "s") => Some(BudgetPeriod::Hour),
        (1, "d") | (24, "h") => Some(BudgetPeriod::Day),
        (1, "mo") | (30, "d") | (31, "d") => Some(BudgetPeriod::Month),
        _ => None,
    };
    if let Some(p) = exact {
        let note = if p == BudgetPeriod::Month && unit == "d" {
            vec![format!(
                "budget_duration {d}: a calendar month in llmesh (from the 1st, UTC), where LiteLLM counts {n} days from the first request"
            )]
        } else {
            vec![format!(
                "budget_duration {d}: llmesh's periods are calendar-aligned in UTC; LiteLLM's start at the first request"
            )]
        };
        return Ok((p, usd, note));
    }
    let (period, period_hours) = if hours < 24.0 {
        (BudgetPeriod::Hour, 1.0)
    } else if hours < 24.0 * 28.0 {
        (BudgetPeriod::Day, 24.0)
    } else {
        (BudgetPeriod::Month, 24.0 * 30.0)
    };
    // Shorter than the period: the whole budget per period (stricter). Longer: its share.
    let limit = if hours <= period_hours {
        usd
    } else {
        ((usd as f64) * period_hours / hours).floor().max(1.0) as u64
    };
    Ok((
        period,
        limit,
        vec![format!(
            "budget_duration {d} has no llmesh period (hour, day, month): {} per {} instead, which never lets more than {} through in any {d}",
            format_usd(limit),
            match period {
                BudgetPeriod::Hour => "hour",
                BudgetPeriod::Day => "day",
                BudgetPeriod::Month => "month",
            },
            format_usd(usd)
        )],
    ))
}

/// `os.environ/VAR` -> `VAR`.
fn env_ref(s: &str) -> Option<String> {
    s.trim()
        .strip_prefix("os.environ/")
        .map(str::to_string)
        .filter(|v| !v.is_empty())
}

fn looks_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["key", "secret", "token", "password", "credential"]
        .iter()
        .any(|w| k.contains(w))
}

/// The provider LiteLLM infers for a model id with no prefix.
fn bare_provider(model: &str) -> Option<(ProviderKind, Option<&'static str>)> {
    let m = model.to_ascii_lowercase();
    let openai = [
        "gpt-",
        "gpt4",
        "chatgpt-",
        "o1",
        "o3",
        "o4",
        "text-embedding-",
        "davinci",
        "babbage",
        "omni-moderation",
        "text-moderation",
        "dall-e",
        "whisper",
        "tts-",
    ];
    if openai.iter().any(|p| m.starts_with(p)) {
        return Some((ProviderKind::Openai, None));
    }
    if m.starts_with("claude") {
        return Some((ProviderKind::Anthropic, None));
    }
    if m.starts_with("gemini") {
        return Some((
            ProviderKind::Gemini,
            Some(
                "LiteLLM sends a bare Gemini name to Vertex AI, which llmesh does not speak; this backend uses the Gemini API (key GEMINI_API_KEY) instead",
            ),
        ));
    }
    if m.starts_with("mistral-") || m.starts_with("open-mistral") || m.starts_with("codestral") {
        return Some((ProviderKind::Mistral, None));
    }
    if m.starts_with("deepseek-") {
        return Some((ProviderKind::Deepseek, None));
    }
    None
}

fn s_name(s: Strategy) -> &'static str {
    match s {
        Strategy::Weighted => "weighted",
        Strategy::Latency => "latency",
        Strategy::LeastBusy => "leastBusy",
        Strategy::Cost => "cost",
        Strategy::Rules => "rules",
        Strategy::Hybrid => "hybrid",
    }
}

/// A Kubernetes object name (DNS subdomain) for a model_name.
fn dns_name(s: &str) -> String {
    let mut out = String::new();
    for c in s.to_ascii_lowercase().chars() {
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' {
            c
        } else {
            '-'
        };
        if (c == '-' || c == '.') && (out.is_empty() || out.ends_with(['-', '.'])) {
            continue;
        }
        out.push(c);
    }
    let out = out.trim_end_matches(['-', '.']).to_string();
    if out.is_empty() {
        "model".into()
    } else {
        trim_name(&out, 253)
    }
}

/// A backend name: lower-case letters, digits, `-`, `_`, `.`.
fn backend_name(s: &str) -> String {
    let out: String = s
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let out = out
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string();
    if out.is_empty() {
        "backend".into()
    } else {
        out
    }
}

fn trim_name(s: &str, max: usize) -> String {
    let cut: String = s.chars().take(max).collect();
    cut.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// `base`, or `base-2`, `base-3`, ... so that it is not in `taken`.
fn unique(base: &str, taken: &[String], max: usize) -> String {
    if !taken.iter().any(|t| t == base) {
        return base.to_string();
    }
    (2..)
        .map(|n| {
            let suffix = format!("-{n}");
            format!("{}{suffix}", trim_name(base, max - suffix.len()))
        })
        .find(|c| !taken.iter().any(|t| t == c))
        .unwrap_or_default()
}

fn to_yaml<T: Serialize>(v: &T) -> Result<String, ImportError> {
    serde_saphyr::to_string(v).map_err(|e| err("output", format!("cannot write YAML: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn import(text: &str) -> String {
        convert("config.yaml", text, &no_env).unwrap_or_else(|e| panic!("{e}"))
    }

    fn routes(out: &str) -> Vec<manifest::Manifest> {
        manifest::parse("out", out, false).unwrap()
    }

    fn route<'a>(m: &'a [manifest::Manifest], want: &str) -> &'a LLMRouteSpec {
        m.iter()
            .find_map(|m| match m {
                manifest::Manifest::Route { name, spec, .. } if name == want => Some(&**spec),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no route {want}"))
    }

    #[test]
    fn a_load_balanced_group_is_one_weighted_route() {
        let out = import(
            "model_list:
  - model_name: gpt-4o
    litellm_params: {model: azure/gpt-4o-eu, api_base: https://eu.openai.azure.com/, api_key: os.environ/AZURE_API_KEY_EU, api_version: 2024-06-01, weight: 3}
    model_info: {base_model: azure/gpt-4o-2024-08-06}
  - model_name: gpt-4o
    litellm_params: {model: openai/gpt-4o, api_key: os.environ/OPENAI_API_KEY, weight: 1}
router_settings: {num_retries: 1}
",
        );
        let m = routes(&out);
        let r = route(&m, "gpt-4o");
        assert_eq!(r.backends.len(), 2);
        let eu = &r.backends[0];
        assert_eq!(
            (eu.provider, eu.model.as_str(), eu.weight),
            (ProviderKind::Azure, "gpt-4o-2024-08-06", Some(3))
        );
        assert_eq!(
            eu.base_url.as_deref(),
            Some("https://eu.openai.azure.com/openai")
        );
        let a = eu.azure.as_ref().unwrap();
        assert_eq!(
            (a.deployment.as_str(), a.api_version.as_deref()),
            ("gpt-4o-eu", Some("2024-06-01"))
        );
        assert_eq!(
            eu.secret_ref.as_ref().unwrap().env_var(),
            "AZURE_API_KEY_EU"
        );
        assert_eq!(r.backends[1].provider, ProviderKind::Openai);
        assert_eq!(r.backends[1].weight, Some(1));
        assert_eq!(
            r.backends[1].secret_ref.as_ref().unwrap().env_var(),
            "OPENAI_API_KEY"
        );
        assert_eq!(r.retry.as_ref().unwrap().attempts, Some(2));
    }

    #[test]
    fn fallback_groups_are_weight_zero_backends_after_the_own_ones() {
        let out = import(
            "model_list:
  - {model_name: small, litellm_params: {model: groq/llama-3.1-8b-instant}}
  - {model_name: small, litellm_params: {model: groq/llama-3.1-8b-instant, api_key: os.environ/GROQ_KEY_2}}
  - {model_name: big, litellm_params: {model: anthropic/claude-sonnet-4-20250514}}
router_settings:
  fallbacks: [{small: [big]}]
",
        );
        let m = routes(&out);
        let r = route(&m, "small");
        let names: Vec<&str> = r.backends.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "llama-3.1-8b-instant",
                "llama-3.1-8b-instant-2",
                "big.claude-sonnet-4-20250514"
            ]
        );
        let w: Vec<Option<u32>> = r.backends.iter().map(|b| b.weight).collect();
        assert_eq!(w, [Some(1), Some(1), Some(0)]);
        assert_eq!(r.fallbacks.as_ref().unwrap().len(), 3);
        // `big` has no fallback of its own.
        assert_eq!(route(&m, "big").backends.len(), 1);
        // LiteLLM's default retries when num_retries is unset.
        assert_eq!(route(&m, "big").retry.as_ref().unwrap().attempts, Some(3));
    }

    #[test]
    fn keys_are_never_copied() {
        let out = import(
            "model_list:
  - {model_name: chat, litellm_params: {model: openai/gpt-4o-mini, api_key: sk-live-secret-123}}
general_settings: {master_key: sk-master-456, database_url: postgres://u:dbpass@h/db}
litellm_settings:
  cache: true
  cache_params: {type: redis, host: redis, port: 6379, password: redispass789}
environment_variables: {REDIS_PASSWORD: envpass000}
",
        );
        for secret in [
            "sk-live-secret-123",
            "sk-master-456",
            "dbpass",
            "redispass789",
            "envpass000",
        ] {
            assert!(!out.contains(secret), "{secret} leaked:\n{out}");
        }
        let m = routes(&out);
        let r = route(&m, "chat");
        assert_eq!(
            r.backends[0].secret_ref.as_ref().unwrap().env_var(),
            "LITELLM_CHAT_GPT_4O_MINI_API_KEY"
        );
        assert!(out.contains("literal key"), "{out}");
        assert!(
            out.contains(
                "# stringData: {api-key: \"<the value of LITELLM_CHAT_GPT_4O_MINI_API_KEY>\"}"
            ),
            "{out}"
        );
        assert!(r.cache.as_ref().unwrap().enabled);
    }

    #[test]
    fn a_model_name_that_is_no_dns_name_keeps_its_name_as_an_alias() {
        let out = import(
            "model_list:
  - {model_name: Claude 3.5 Sonnet, litellm_params: {model: claude-3-5-sonnet-20240620}}
router_settings:
  model_group_alias: {sonnet: Claude 3.5 Sonnet}
",
        );
        let m = routes(&out);
        let r = route(&m, "claude-3.5-sonnet");
        assert_eq!(r.aliases, ["Claude 3.5 Sonnet", "sonnet"]);
        assert_eq!(r.backends[0].provider, ProviderKind::Anthropic);
    }

    #[test]
    fn budgets_never_let_more_through_than_litellm() {
        let b = |usd, d| budget_period(usd, Some(d)).unwrap();
        assert_eq!(b(10_000_000, "30d").0, BudgetPeriod::Month);
        assert_eq!(b(10_000_000, "1d").0, BudgetPeriod::Day);
        assert_eq!(b(10_000_000, "24h").0, BudgetPeriod::Day);
        let (p, l, _) = b(70_000_000, "7d");
        assert_eq!((p, l), (BudgetPeriod::Day, 10_000_000));
        let (p, l, _) = b(5_000_000, "30m");
        assert_eq!((p, l), (BudgetPeriod::Hour, 5_000_000));
        let (p, l, _) = b(12_000_000, "12h");
        assert_eq!((p, l), (BudgetPeriod::Hour, 1_000_000));
        assert!(budget_period(1, Some("5w")).is_err());
    }

    #[test]
    fn timeouts_and_cooldowns() {
        let out = import(
            "model_list:
  - {model_name: a, litellm_params: {model: openai/gpt-4o-2024-08-06, timeout: 600, stream_timeout: 20}}
router_settings: {num_retries: 0, allowed_fails: 2, cooldown_time: 45}
",
        );
        let m = routes(&out);
        let r = route(&m, "a");
        let t = r.timeouts.as_ref().unwrap();
        assert_eq!(t.attempt.as_deref(), Some("600s"));
        assert_eq!(t.first_token.as_deref(), Some("600s"));
        assert_eq!(t.stream_idle.as_deref(), Some("20s"));
        assert_eq!(t.total.as_deref(), Some("600s"));
        let cb = r.circuit_breaker.as_ref().unwrap();
        assert_eq!(
            (cb.consecutive_failures, cb.cooldown.as_deref()),
            (Some(3), Some("45s"))
        );
        assert_eq!(r.retry.as_ref().unwrap().attempts, Some(1));
    }

    #[test]
    fn what_cannot_be_imported_is_named() {
        let e = convert(
            "c.yaml",
            "model_list:\n  - {model_name: x, litellm_params: {model: bedrock/anthropic.claude-v2}}\n",
            &no_env,
        )
        .unwrap_err();
        assert!(e.message.contains("no `bedrock` provider"), "{e}");
        let e = convert(
            "c.yaml",
            "model_list:\n  - {model_name: x, litellm_params: {model: azure/d, api_key: os.environ/K}}\n",
            &no_env,
        )
        .unwrap_err();
        assert_eq!(e.setting, "model_list[0].litellm_params.api_base");
        let e = convert(
            "c.yaml",
            "model_list:\n  - {model_name: x, litellm_params: {model: openai/gpt-4o, api_key: os.environ/lower_key}}\n",
            &no_env,
        )
        .unwrap_err();
        assert_eq!(e.setting, "model_list[0].litellm_params.api_key");
        let e = convert(
            "c.yaml",
            "model_list:\n  - {model_name: x, litellm_params: {model: openai/gpt-4o, api_base: \"ftp://x\"}}\n",
            &no_env,
        )
        .unwrap_err();
        assert!(e.setting.starts_with("model_list[0]"), "{e}");
        assert!(e.message.contains("baseUrl"), "{e}");
    }

    #[test]
    fn api_base_from_the_environment() {
        let env = |v: &str| (v == "MY_BASE").then(|| "http://10.0.0.1:8000/v1".to_string());
        let out = convert(
            "c.yaml",
            "model_list:\n  - {model_name: x, litellm_params: {model: hosted_vllm/meta-llama/Llama-3.1-8B-Instruct, api_base: os.environ/MY_BASE}}\n",
            &env,
        )
        .unwrap();
        let m = routes(&out);
        let b = &route(&m, "x").backends[0];
        assert_eq!(
            (b.provider, b.model.as_str(), b.base_url.as_deref()),
            (
                ProviderKind::Vllm,
                "meta-llama/Llama-3.1-8B-Instruct",
                Some("http://10.0.0.1:8000/v1")
            )
        );
    }
}
