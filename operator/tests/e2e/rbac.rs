//! The chart's RBAC (`charts/llmesh/templates/rbac.yaml`, default values, installed by
//! `install_llmesh`) grants what the operator does and nothing else. The other e2e tests run the
//! operator with exactly these rules (a missing rule fails them); this one checks that nearby,
//! more powerful permissions are absent.

use anyhow::Result;

use crate::harness::{OPERATOR_SA, SYSTEM_NS, env};

async fn can_i(verb: &str, resource: &str, ns: Option<&str>) -> Result<bool> {
    can_i_as(OPERATOR_SA, verb, resource, ns).await
}

/// `kubectl auth can-i` for ServiceAccount `SYSTEM_NS/sa`; `resource#sub` asks about a
/// subresource, `ns` None about all namespaces.
pub async fn can_i_as(sa: &str, verb: &str, resource: &str, ns: Option<&str>) -> Result<bool> {
    let env = env().await;
    let who = format!("--as=system:serviceaccount:{SYSTEM_NS}:{sa}");
    // `resource#sub` asks about a subresource (`resource/name` names an object).
    let (resource, sub) = match resource.split_once('#') {
        Some((r, s)) => (r, Some(format!("--subresource={s}"))),
        None => (resource, None),
    };
    let mut args = vec!["auth", "can-i", verb, resource, who.as_str()];
    if let Some(s) = &sub {
        args.push(s);
    }
    match ns {
        Some(n) => args.extend(["-n", n]),
        None => args.push("--all-namespaces"),
    }
    let out = env.cp.kubectl(args).await?;
    Ok(String::from_utf8_lossy(&out.stdout).trim() == "yes")
}

#[tokio::test]
async fn the_operator_service_account_has_exactly_what_it_needs() -> Result<()> {
    let allowed = [
        ("watch", "llmroutes.llmesh.io", None),
        ("list", "llmbudgets.llmesh.io", None),
        ("patch", "llmroutes.llmesh.io#status", Some("team")),
        ("patch", "llmbudgets.llmesh.io#status", Some("team")),
        ("list", "pods", None),
        ("watch", "secrets", None),
        ("get", "secrets", Some("team")),
        ("get", "namespaces/team", None),
        ("create", "tokenreviews.authentication.k8s.io", None),
        ("create", "events.events.k8s.io", Some("team")),
        (
            "patch",
            "mutatingwebhookconfigurations/llmesh-sidecar-injector",
            None,
        ),
        (
            "update",
            "leases.coordination.k8s.io/llmesh-operator-leader",
            Some(SYSTEM_NS),
        ),
        ("update", "secrets/llmesh-operator-tls", Some(SYSTEM_NS)),
        // Fleet budget ledgers, in its own namespace.
        ("create", "configmaps", Some(SYSTEM_NS)),
        ("update", "configmaps", Some(SYSTEM_NS)),
        ("watch", "configmaps", Some(SYSTEM_NS)),
    ];
    let denied = [
        // Specs belong to their owners; the operator writes status only.
        ("update", "llmroutes.llmesh.io", Some("team")),
        ("update", "llmroutes.llmesh.io#status", Some("team")),
        ("patch", "llmroutes.llmesh.io", Some("team")),
        ("delete", "llmbudgets.llmesh.io", Some("team")),
        // Pods are read, never changed (injection happens in admission, not by patching).
        ("patch", "pods", Some("team")),
        ("create", "pods", Some("team")),
        ("delete", "pods", Some("team")),
        ("get", "pods", Some("team")),
        // Secrets are read; only its own TLS Secret is written, and only in its namespace.
        ("update", "secrets", Some("team")),
        ("create", "secrets", Some("team")),
        ("update", "secrets/other", Some(SYSTEM_NS)),
        ("delete", "secrets/llmesh-operator-tls", Some(SYSTEM_NS)),
        // Nothing else (ConfigMaps only in its own namespace).
        ("list", "configmaps", None),
        ("get", "configmaps", Some("team")),
        ("update", "configmaps", Some("team")),
        ("create", "serviceaccounts/token", Some("team")),
        (
            "update",
            "leases.coordination.k8s.io/other",
            Some(SYSTEM_NS),
        ),
        ("update", "leases.coordination.k8s.io", Some("team")),
        ("create", "mutatingwebhookconfigurations", None),
        ("patch", "mutatingwebhookconfigurations/someone-else", None),
        ("patch", "validatingwebhookconfigurations", None),
        ("list", "namespaces", None),
        ("patch", "namespaces/team", None),
        ("create", "clusterrolebindings", None),
        ("create", "subjectaccessreviews.authorization.k8s.io", None),
    ];
    let mut wrong = Vec::new();
    for (verb, res, ns) in allowed {
        if !can_i(verb, res, ns).await? {
            wrong.push(format!("missing: {verb} {res} in {ns:?}"));
        }
    }
    for (verb, res, ns) in denied {
        if can_i(verb, res, ns).await? {
            wrong.push(format!("excess: {verb} {res} in {ns:?}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    Ok(())
}
