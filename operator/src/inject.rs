//! Sidecar injection as a pure function: a Pod (and its namespace's labels) in, the Pod with
//! the llmesh sidecar added out. The webhook turns the difference into a JSON patch.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, ObjectFieldSelector, Pod,
    ProjectedVolumeSource, ResourceRequirements, SeccompProfile, SecurityContext,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The label (on a namespace or a pod) that opts in (`enabled`) or out (`disabled`, pod only).
pub const INJECT_LABEL: &str = "llmesh.io/inject";
/// The label the webhook puts on pods it injected; the operator watches only those pods.
pub const SIDECAR_LABEL: &str = "llmesh.io/sidecar";
/// The value of [`SIDECAR_LABEL`].
pub const SIDECAR_LABEL_VALUE: &str = "injected";
/// The injected container's name, also how re-injection is detected.
pub const CONTAINER_NAME: &str = "llmesh-sidecar";
/// Where the projected service-account token is mounted.
pub const TOKEN_DIR: &str = "/var/run/secrets/llmesh";
/// Where the last good snapshot is kept.
pub const CACHE_DIR: &str = "/var/lib/llmesh";
const TOKEN_VOLUME: &str = "llmesh-token";
const CACHE_VOLUME: &str = "llmesh-cache";
/// Lifetime the kubelet gives the projected token (it rotates it at 80%).
pub const TOKEN_SECONDS: i64 = 3600;

/// What the injected sidecar looks like.
#[derive(Clone, Debug)]
pub struct SidecarTemplate {
    /// Container image.
    pub image: String,
    /// `Always`, `IfNotPresent` or `Never`; unset leaves the kubelet's default.
    pub image_pull_policy: Option<String>,
    /// URL of the operator's config server, as the sidecar reaches it.
    pub operator_url: String,
    /// The CA the sidecar trusts for the operator (PEM).
    pub ca_pem: String,
    /// Port the sidecar listens on, on loopback.
    pub port: u16,
    /// CPU request (`50m`).
    pub cpu_request: String,
    /// Memory request (`32Mi`).
    pub memory_request: String,
    /// Memory limit (`128Mi`).
    pub memory_limit: String,
    /// Numeric user and group to run as (the image's non-root user).
    pub run_as: i64,
}

/// Whether a pod gets a sidecar, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Add the sidecar.
    Inject,
    /// The pod already has it: change nothing.
    AlreadyInjected,
    /// Neither the pod nor its namespace opted in, or the pod opted out.
    Skip(&'static str),
}

/// Whether the pod's spec holds the llmesh sidecar (a container or init container named
/// [`CONTAINER_NAME`]): what [`SIDECAR_LABEL`] claims, checked where the label alone would be
/// trusted. Anyone creating a pod can set the label; the spec shows what runs.
pub fn has_sidecar(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|s| {
        s.init_containers
            .iter()
            .flatten()
            .chain(&s.containers)
            .any(|c| c.name == CONTAINER_NAME)
    })
}

/// Decides from the pod's and its namespace's labels: a pod label `llmesh.io/inject=disabled`
/// wins, then `enabled` on the pod or the namespace opts in.
pub fn decide(pod: &Pod, namespace_labels: &BTreeMap<String, String>) -> Decision {
    if has_sidecar(pod) {
        return Decision::AlreadyInjected;
    }
    let pod_label = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(INJECT_LABEL))
        .map(String::as_str);
    match pod_label {
        Some("disabled") => Decision::Skip("the pod opted out (llmesh.io/inject=disabled)"),
        Some("enabled") => Decision::Inject,
        _ if namespace_labels.get(INJECT_LABEL).map(String::as_str) == Some("enabled") => {
            Decision::Inject
        }
        _ => Decision::Skip("neither the pod nor its namespace has llmesh.io/inject=enabled"),
    }
}

/// The pod with the sidecar added: a native sidecar (an init container with
/// `restartPolicy: Always`, first so it starts before everything else), its token and cache
/// volumes, the injected label, and base-URL variables on app containers that lack them.
pub fn inject(pod: &Pod, t: &SidecarTemplate) -> Pod {
    let mut pod = pod.clone();
    pod.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(SIDECAR_LABEL.into(), SIDECAR_LABEL_VALUE.into());
    let spec = pod.spec.get_or_insert_with(Default::default);
    spec.init_containers
        .get_or_insert_with(Vec::new)
        .insert(0, container(t));
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    volumes.push(Volume {
        name: TOKEN_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(0o440),
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(llmesh_api::protocol::AUDIENCE.into()),
                    expiration_seconds: Some(TOKEN_SECONDS),
                    path: "token".into(),
                }),
                ..Default::default()
            }]),
        }),
        ..Default::default()
    });
    volumes.push(Volume {
        name: CACHE_VOLUME.into(),
        // tmpfs: the snapshot holds provider keys, which should never reach the node's disk.
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            size_limit: Some(Quantity("16Mi".into())),
        }),
        ..Default::default()
    });
    let base = format!("http://127.0.0.1:{}", t.port);
    for c in &mut spec.containers {
        let env = c.env.get_or_insert_with(Vec::new);
        for (name, value) in [
            ("OPENAI_BASE_URL", format!("{base}/v1")),
            ("ANTHROPIC_BASE_URL", base.clone()),
        ] {
            if !env.iter().any(|e| e.name == name) {
                env.push(EnvVar {
                    name: name.into(),
                    value: Some(value),
                    ..Default::default()
                });
            }
        }
    }
    pod
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container(t: &SidecarTemplate) -> Container {
    let q = |s: &str| Quantity(s.to_string());
    Container {
        name: CONTAINER_NAME.into(),
        image: Some(t.image.clone()),
        image_pull_policy: t.image_pull_policy.clone(),
        restart_policy: Some("Always".into()),
        args: Some(vec![
            "--operator".into(),
            t.operator_url.clone(),
            "--token-file".into(),
            format!("{TOKEN_DIR}/token"),
            "--snapshot-cache".into(),
            format!("{CACHE_DIR}/snapshot.json"),
            "--listen".into(),
            format!("127.0.0.1:{}", t.port),
        ]),
        env: Some(vec![
            EnvVar {
                name: "LLMESH_OPERATOR_CA_PEM".into(),
                value: Some(t.ca_pem.clone()),
                ..Default::default()
            },
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
        ]),
        resources: Some(ResourceRequirements {
            requests: Some(
                [
                    ("cpu".to_string(), q(&t.cpu_request)),
                    ("memory".to_string(), q(&t.memory_request)),
                ]
                .into(),
            ),
            limits: Some([("memory".to_string(), q(&t.memory_limit))].into()),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(t.run_as),
            run_as_group: Some(t.run_as),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: TOKEN_VOLUME.into(),
                mount_path: TOKEN_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: CACHE_VOLUME.into(),
                mount_path: CACHE_DIR.into(),
                ..Default::default()
            },
        ]),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
