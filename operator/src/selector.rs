//! Label selectors against a pod's labels, with Kubernetes' semantics.

use std::collections::BTreeMap;

use llmesh_api::route::{LabelSelector, SelectorOperator};

/// Whether `selector` selects an object with `labels`. No selector, or an empty one, selects
/// everything (the route's default: every injected pod of the namespace).
pub fn matches(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(s) = selector else { return true };
    s.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
        && s.match_expressions.iter().all(|e| {
            let value = labels.get(&e.key);
            match e.operator {
                SelectorOperator::In => value.is_some_and(|v| e.values.contains(v)),
                SelectorOperator::NotIn => value.is_none_or(|v| !e.values.contains(v)),
                SelectorOperator::Exists => value.is_some(),
                SelectorOperator::DoesNotExist => value.is_none(),
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmesh_api::route::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn req(key: &str, operator: SelectorOperator, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn no_selector_or_an_empty_one_selects_all() {
        let l = labels(&[("app", "web")]);
        assert!(matches(None, &l));
        assert!(matches(Some(&LabelSelector::default()), &l));
        assert!(matches(Some(&LabelSelector::default()), &BTreeMap::new()));
    }

    #[test]
    fn match_labels_need_every_pair() {
        let s = LabelSelector {
            match_labels: labels(&[("app", "web"), ("tier", "front")]),
            ..Default::default()
        };
        assert!(matches(
            Some(&s),
            &labels(&[("app", "web"), ("tier", "front"), ("x", "y")])
        ));
        assert!(!matches(Some(&s), &labels(&[("app", "web")])));
        assert!(!matches(
            Some(&s),
            &labels(&[("app", "web"), ("tier", "back")])
        ));
    }

    #[test]
    fn expressions_follow_kubernetes_semantics() {
        let web = labels(&[("app", "web")]);
        let none = BTreeMap::new();
        let sel = |r| LabelSelector {
            match_expressions: vec![r],
            ..Default::default()
        };
        let in_ = sel(req("app", SelectorOperator::In, &["web", "api"]));
        assert!(matches(Some(&in_), &web));
        assert!(!matches(Some(&in_), &none));
        let not_in = sel(req("app", SelectorOperator::NotIn, &["web"]));
        assert!(!matches(Some(&not_in), &web));
        assert!(
            matches(Some(&not_in), &none),
            "NotIn selects objects without the label"
        );
        let exists = sel(req("app", SelectorOperator::Exists, &[]));
        assert!(matches(Some(&exists), &web) && !matches(Some(&exists), &none));
        let absent = sel(req("app", SelectorOperator::DoesNotExist, &[]));
        assert!(!matches(Some(&absent), &web) && matches(Some(&absent), &none));
    }
}
