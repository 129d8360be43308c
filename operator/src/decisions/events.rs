//! Which Kubernetes Events to emit, as a pure function of the status before and after a
//! reconcile: one Event per problem when it appears or changes (not on every reconcile), and
//! the compiler's warnings once per generation.

use kube::runtime::events::{Event, EventType};
use llmesh_api::compile::FieldError;
use llmesh_api::condition::{ACCEPTED, Condition, RESOLVED_REFS};

/// An Event to publish about the reconciled object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Emit {
    /// Warning or Normal.
    pub warning: bool,
    /// CamelCase reason (`MissingSecret`, `UnpinnedModel`).
    pub reason: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl Emit {
    /// The kube-runtime event, with `action` saying what the operator was doing.
    pub fn to_event(&self) -> Event {
        Event {
            type_: if self.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: self.reason.clone(),
            // The Events API caps notes at 1 kB.
            note: Some(truncate(&self.message, 1000)),
            action: "Reconcile".into(),
            secondary: None,
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max - 3;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Events for a status change: a Warning for each condition that is now False with a new
/// reason or message (`Ready` while rolling out is progress, not a problem), a Normal
/// `Accepted` when an object becomes valid again, and each warning when the generation is new.
pub fn for_change(
    old_conditions: &[Condition],
    old_generation: Option<i64>,
    new_conditions: &[Condition],
    new_generation: i64,
    warnings: &[FieldError],
) -> Vec<Emit> {
    let mut out = Vec::new();
    for c in new_conditions {
        let before = old_conditions.iter().find(|o| o.type_ == c.type_);
        let same = before.is_some_and(|o| {
            o.status == c.status && o.reason == c.reason && o.message == c.message
        });
        if same {
            continue;
        }
        // Ready=False while rolling out is progress, and NotServed only echoes the problem
        // already reported for Accepted or ResolvedRefs.
        let consequence = matches!(
            c.reason.as_str(),
            crate::decisions::status::reason::ROLLING_OUT
                | crate::decisions::status::reason::NOT_SERVED
        );
        if c.status != "True" && !consequence {
            out.push(Emit {
                warning: true,
                reason: c.reason.clone(),
                message: c.message.clone(),
            });
        } else if c.type_ == ACCEPTED
            && c.status == "True"
            && before.is_some_and(|o| o.status != "True")
        {
            out.push(Emit {
                warning: false,
                reason: c.reason.clone(),
                message: "the spec is valid again".into(),
            });
        }
    }
    // Warnings come with a successful compile: report them for each new generation, and when a
    // generation that failed to compile (a missing Secret, say) compiles at last.
    let clean = |cs: &[Condition]| {
        [ACCEPTED, RESOLVED_REFS]
            .iter()
            .all(|t| cs.iter().any(|c| c.type_ == *t && c.status == "True"))
    };
    let newly_clean = clean(new_conditions) && !clean(old_conditions);
    if old_generation != Some(new_generation) || newly_clean {
        for w in warnings {
            out.push(Emit {
                warning: true,
                reason: warning_reason(w).into(),
                message: w.to_string(),
            });
        }
    }
    out
}

fn warning_reason(w: &FieldError) -> &'static str {
    if w.field.ends_with(".model") {
        "UnpinnedModel"
    } else if w.field.ends_with(".prices") {
        "UnknownPrice"
    } else {
        "Warning"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decisions::status;

    fn warn(field: &str, msg: &str) -> FieldError {
        FieldError {
            field: field.into(),
            message: msg.into(),
        }
    }

    #[test]
    fn a_new_problem_is_reported_once() {
        let bad = vec![status::missing_secret(
            "spec.backends[0].secretRef: Secret team/openai not found",
        )];
        let first = for_change(&[], None, &bad, 1, &[]);
        assert_eq!(first.len(), 1);
        assert!(first[0].warning);
        assert_eq!(first[0].reason, "MissingSecret");
        assert!(first[0].message.contains("team/openai"));
        assert!(for_change(&bad, Some(1), &bad, 1, &[]).is_empty());
    }

    #[test]
    fn recovery_is_a_normal_event_and_rollout_is_not_a_warning() {
        let bad = vec![status::invalid("spec.retry.backoff: bad")];
        let good = vec![status::accepted()];
        let e = for_change(&bad, Some(1), &good, 2, &[]);
        assert_eq!(e.len(), 1);
        assert!(!e[0].warning);
        let rolling = vec![status::ready(status::Rollout { ready: 1, total: 3 })];
        assert!(for_change(&[], Some(2), &rolling, 2, &[]).is_empty());
    }

    #[test]
    fn warnings_are_emitted_once_per_generation() {
        let w = vec![warn(
            "spec.backends[0].model",
            "`gpt-4o` is an alias the provider can move",
        )];
        let c = vec![status::accepted()];
        let e = for_change(&[], None, &c, 3, &w);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].reason, "UnpinnedModel");
        assert!(e[0].message.starts_with("spec.backends[0].model: "));
        assert!(for_change(&c, Some(3), &c, 3, &w).is_empty());
        // Same generation, but it compiles only now (its Secret appeared): warn now.
        let unresolved = vec![status::accepted(), status::missing_secret("no Secret")];
        let resolved = vec![status::accepted(), status::refs_resolved()];
        let e = for_change(&unresolved, Some(3), &resolved, 3, &w);
        assert!(e.iter().any(|e| e.reason == "UnpinnedModel"), "{e:?}");
    }

    #[test]
    fn long_notes_are_cut_on_a_character_boundary() {
        let long = "é".repeat(800);
        let t = truncate(&long, 1000);
        assert!(t.len() <= 1000 && t.ends_with("..."));
    }
}
