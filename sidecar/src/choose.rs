//! Choosing a backend: the route's strategy picks the first one, its fallbacks follow.
//! Pure functions of the route, its live state and the request, so every strategy is tested
//! without a network.

use tokio::time::Instant;

use llmesh_api::Strategy;
use llmesh_api::money::cost_of;
use llmesh_api::route::{Complexity, RankBy};

use crate::internal::Op;
use crate::runtime::{BackendState, RouteState};
use crate::tokens::PromptFacts;

/// What routing needs to know about a request.
#[derive(Clone, Debug, Default)]
pub struct Facts<'a> {
    /// Sticky key for A/B splits (`x-llmesh-user` or the body's `user`).
    pub user_key: Option<&'a str>,
    /// The `x-llmesh-task` header.
    pub task: Option<&'a str>,
    /// Prompt size and complexity.
    pub prompt: PromptFacts,
    /// `max_tokens` after limits.
    pub max_tokens: Option<u32>,
    /// What is asked.
    pub op: Option<Op>,
}

/// The backends to try, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Backend indices: the chosen one first, then fallbacks.
    pub order: Vec<usize>,
    /// The rule that matched, for the rules strategy.
    pub rule: Option<usize>,
}

/// Plans a request: `forced` (a pinned or downgrade backend) skips the strategy and fallbacks.
pub fn plan(route: &RouteState, facts: &Facts<'_>, now: Instant, forced: Option<usize>) -> Plan {
    if let Some(f) = forced {
        return Plan {
            order: vec![f],
            rule: None,
        };
    }
    let (first, rule) = first_choice(route, facts, now);
    let mut order = Vec::with_capacity(route.backends.len());
    order.push(first);
    order.extend(route.spec.fallbacks.iter().copied().filter(|&i| i != first));
    Plan { order, rule }
}

fn first_choice(route: &RouteState, facts: &Facts<'_>, now: Instant) -> (usize, Option<usize>) {
    let all: Vec<usize> = (0..route.backends.len()).collect();
    let fits = |i: &usize| fits(&route.backends[*i], facts);
    match route.spec.strategy {
        Strategy::Weighted => (weighted(route, &all, facts.user_key), None),
        Strategy::Rules => match route.spec.rules.iter().position(|r| rule_matches(r, facts)) {
            Some(ri) => (
                weighted(route, &route.spec.rules[ri].backends, facts.user_key),
                Some(ri),
            ),
            None => (weighted(route, &all, facts.user_key), None),
        },
        Strategy::Latency => {
            let c = healthy(route, &all, facts, now);
            (min_by(&c, |i| route.backends[i].ewma()).unwrap_or(0), None)
        }
        Strategy::LeastBusy => {
            let c = healthy(route, &all, facts, now);
            (
                min_by(&c, |i| {
                    route.backends[i]
                        .in_flight
                        .load(std::sync::atomic::Ordering::Relaxed)
                        .max(0) as u64
                })
                .unwrap_or(0),
                None,
            )
        }
        Strategy::Cost => {
            let c: Vec<usize> = healthy(route, &all, facts, now)
                .into_iter()
                .filter(|i| within_hybrid_limits(route, *i))
                .collect();
            let c = if c.is_empty() {
                healthy(route, &all, facts, now)
            } else {
                c
            };
            (
                min_by(&c, |i| request_cost(&route.backends[i], facts)).unwrap_or(0),
                None,
            )
        }
        Strategy::Hybrid => {
            let healthy_all = healthy(route, &all, facts, now);
            let c: Vec<usize> = healthy_all
                .iter()
                .copied()
                .filter(|i| within_hybrid_limits(route, *i))
                .collect();
            let c = if c.is_empty() { healthy_all } else { c };
            let pick = match route.spec.hybrid.rank_by {
                RankBy::Cost => min_by(&c, |i| request_cost(&route.backends[i], facts)),
                RankBy::Latency => min_by(&c, |i| route.backends[i].ewma()),
            };
            (
                pick.or_else(|| all.iter().copied().find(fits)).unwrap_or(0),
                None,
            )
        }
    }
}

/// What choosing a backend on `route` reads of the prompt: its size (rules on prompt tokens,
/// context windows, the cost-ranked strategies), and its reasoning cues (rules on complexity,
/// which also read the size). Callers estimate the prompt before choosing only when it does.
pub fn reads_prompt(route: &RouteState) -> PromptReads {
    let rules = route.spec.strategy == Strategy::Rules;
    let cues = rules && route.spec.rules.iter().any(|r| r.complexity.is_some());
    let size = cues
        || matches!(route.spec.strategy, Strategy::Cost | Strategy::Hybrid)
        || rules
            && route
                .spec
                .rules
                .iter()
                .any(|r| r.min_prompt_tokens.is_some() || r.max_prompt_tokens.is_some())
        || route
            .backends
            .iter()
            .any(|b| b.spec.context_window.is_some());
    PromptReads { size, cues }
}

/// What [`reads_prompt`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PromptReads {
    /// The estimated tokens.
    pub size: bool,
    /// The reasoning cues.
    pub cues: bool,
}

/// Whether the request fits the backend's context window and the backend serves the operation.
fn fits(b: &BackendState, facts: &Facts<'_>) -> bool {
    let need = u64::from(facts.prompt.tokens) + u64::from(facts.max_tokens.unwrap_or(0));
    b.spec.context_window.is_none_or(|w| u64::from(w) >= need)
        && facts.op.is_none_or(|op| b.provider.supports(op))
}

fn healthy(route: &RouteState, ids: &[usize], facts: &Facts<'_>, now: Instant) -> Vec<usize> {
    let ok: Vec<usize> = ids
        .iter()
        .copied()
        .filter(|&i| route.backends[i].available(now) && fits(&route.backends[i], facts))
        .collect();
    if ok.is_empty() {
        // Nothing healthy: keep every backend that fits, so a probe can go out.
        ids.iter()
            .copied()
            .filter(|&i| fits(&route.backends[i], facts))
            .collect()
    } else {
        ok
    }
}

fn within_hybrid_limits(route: &RouteState, i: usize) -> bool {
    let b = &route.backends[i];
    let h = &route.spec.hybrid;
    h.max_cost_per_million
        .is_none_or(|max| b.spec.prices.blended() <= max)
        && h.max_latency_ms.is_none_or(|max| b.ewma() <= max * 1_000)
}

/// Estimated cost of this request on a backend, micro-dollars (output assumed `max_tokens`,
/// else 256).
fn request_cost(b: &BackendState, facts: &Facts<'_>) -> u64 {
    let p = &b.spec.prices;
    cost_of(u64::from(facts.prompt.tokens), p.input)
        + cost_of(u64::from(facts.max_tokens.unwrap_or(256)), p.output)
}

fn min_by(ids: &[usize], key: impl Fn(usize) -> u64) -> Option<usize> {
    // Ties go to the earlier backend in the spec.
    ids.iter().copied().min_by_key(|&i| (key(i), i))
}

fn rule_matches(r: &llmesh_api::snapshot::Rule, f: &Facts<'_>) -> bool {
    (r.tasks.is_empty() || f.task.is_some_and(|t| r.tasks.iter().any(|x| x == t)))
        && r.min_prompt_tokens.is_none_or(|m| f.prompt.tokens >= m)
        && r.max_prompt_tokens.is_none_or(|m| f.prompt.tokens <= m)
        && r.complexity
            .is_none_or(|c: Complexity| c == f.prompt.complexity)
}

/// Weighted choice among `ids`, sticky per user key by weighted rendezvous hashing: each backend
/// scores `weight / -ln(u)` with `u` a hash of (user, backend name), so the same user keeps the
/// same backend and a weight change moves only the users that must move. Without a user key
/// `u` is random. When no backend in `ids` has weight, they count equally.
pub fn weighted(route: &RouteState, ids: &[usize], user_key: Option<&str>) -> usize {
    let any_weight = ids.iter().any(|&i| route.backends[i].spec.weight > 0);
    let mut best = (f64::NEG_INFINITY, ids.first().copied().unwrap_or(0));
    for &i in ids {
        let b = &route.backends[i];
        let w = if any_weight { b.spec.weight } else { 1 };
        if w == 0 {
            continue;
        }
        let h = match user_key {
            Some(u) => stable_hash(u, &b.spec.name),
            None => fastrand::u64(..),
        };
        // u in (0, 1): the top 53 bits, shifted away from 0.
        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let score = f64::from(w) / -u.ln();
        if score > best.0 {
            best = (score, i);
        }
    }
    best.1
}

/// A hash of (user, backend) that is the same in every sidecar and every version, so one user
/// sees one variant across replicas and restarts: FNV-1a, then the splitmix64 finaliser.
pub fn stable_hash(user: &str, backend: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in user.bytes().chain([0xff]).chain(backend.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests;
