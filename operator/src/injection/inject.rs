//! Sidecar injection as a pure function: a Pod (and its namespace's labels) in, the Pod with
//! the llmesh sidecar added out. The webhook turns the difference into a JSON patch. The pod's
//! `llmesh.io/sidecar-*` annotations adjust the sidecar ([`annotations`]).

pub mod annotations;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, Pod, Probe, ProjectedVolumeSource, ResourceRequirements,
    SeccompProfile, SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount,
    VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

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
/// Name of the sidecar's admin containerPort (`/metrics`, `/healthz`, `/readyz` on the pod IP),
/// what probes and a PodMonitor refer to.
pub const ADMIN_PORT_NAME: &str = "llmesh-admin";
/// The value of `OPENAI_API_KEY` and `ANTHROPIC_API_KEY` set on app containers that have none:
/// the clients insist on a key, and the sidecar holds the real one.
pub const PLACEHOLDER_KEY: &str = "llmesh-placeholder";
/// The oldest Kubernetes minor version (1.x) with native sidecars on by default (the
/// `SidecarContainers` feature: beta in 1.29, GA in 1.33).
pub const MIN_KUBERNETES_MINOR: u32 = 29;

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
    /// Port of the admin listener on the pod IP (`/metrics`, `/healthz`, `/readyz`).
    pub admin_port: u16,
    /// CPU request (`50m`).
    pub cpu_request: String,
    /// CPU limit; `None`: none (throttling adds latency to every request).
    pub cpu_limit: Option<String>,
    /// Memory request (`32Mi`).
    pub memory_request: String,
    /// Memory limit (`128Mi`).
    pub memory_limit: String,
    /// The sidecar's `--max-in-flight` (0: no limit).
    pub max_in_flight: usize,
    /// The sidecar's `--log-format`: `text` or `json`.
    pub log_format: String,
    /// The sidecar's log level (`LLMESH_LOG`); `None`: its default, `info`.
    pub log_level: Option<String>,
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

/// Whether a cluster running Kubernetes `major.minor` (as `/version` reports them: GKE and EKS
/// write `29+`) has native sidecars; if not, the refusal to show.
pub fn native_sidecars(major: &str, minor: &str) -> Result<(), String> {
    let digits = |s: &str| -> Option<u32> {
        let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        s[..end].parse().ok()
    };
    match (digits(major), digits(minor)) {
        (Some(1), Some(m)) if m < MIN_KUBERNETES_MINOR => Err(format!(
            "llmesh: this cluster runs Kubernetes {major}.{minor}; the llmesh sidecar is a native sidecar \
             (an init container with restartPolicy: Always), which needs Kubernetes 1.{MIN_KUBERNETES_MINOR} or newer. \
             Upgrade the cluster, or take the llmesh.io/inject=enabled label off this pod and its namespace"
        )),
        _ => Ok(()),
    }
}

/// The pod with the sidecar added: a native sidecar (an init container with
/// `restartPolicy: Always`, first so it starts before everything else, whose startupProbe makes
/// the kubelet hold the app containers until it serves a config), its token and cache volumes,
/// the injected label, and, on app containers that lack them, base-URL variables and
/// placeholder API keys.
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
        // A variable from envFrom may be a real key the webhook cannot see: an env entry would
        // override it, so such containers get no placeholder.
        let keys_possible = c.env_from.as_ref().is_some_and(|f| !f.is_empty());
        let env = c.env.get_or_insert_with(Vec::new);
        let mut add = |name: &str, value: String| {
            if !env.iter().any(|e| e.name == name) {
                env.push(EnvVar {
                    name: name.into(),
                    value: Some(value),
                    ..Default::default()
                });
            }
        };
        add("OPENAI_BASE_URL", format!("{base}/v1"));
        add("ANTHROPIC_BASE_URL", base.clone());
        if !keys_possible {
            add("OPENAI_API_KEY", PLACEHOLDER_KEY.into());
            add("ANTHROPIC_API_KEY", PLACEHOLDER_KEY.into());
        }
    }
    pod
}

/// An HTTP GET of `path` on the admin port.
fn admin_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(ADMIN_PORT_NAME.into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(3),
        ..Default::default()
    }
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
    let mut limits: BTreeMap<String, Quantity> =
        [("memory".to_string(), q(&t.memory_limit))].into();
    if let Some(cpu) = &t.cpu_limit {
        limits.insert("cpu".into(), q(cpu));
    }
    let mut env = vec![
        EnvVar {
            name: "LLMESH_OPERATOR_CA_PEM".into(),
            value: Some(t.ca_pem.clone()),
            ..Default::default()
        },
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
    ];
    if let Some(level) = &t.log_level {
        env.push(EnvVar {
            name: "LLMESH_LOG".into(),
            value: Some(annotations::log_filter(level)),
            ..Default::default()
        });
    }
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
            "--admin-listen".into(),
            format!("0.0.0.0:{}", t.admin_port),
            "--max-in-flight".into(),
            t.max_in_flight.to_string(),
            "--log-format".into(),
            t.log_format.clone(),
        ]),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some(ADMIN_PORT_NAME.into()),
            container_port: i32::from(t.admin_port),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        // The kubelet starts the app containers only once a restartable init container's
        // startupProbe passes: here, once the sidecar serves a config. Up to 10 minutes, as
        // Istio allows its proxy, then the kubelet restarts it.
        startup_probe: Some(admin_probe("/readyz", 1, 600)),
        readiness_probe: Some(admin_probe("/readyz", 5, 3)),
        resources: Some(ResourceRequirements {
            requests: Some(
                [
                    ("cpu".to_string(), q(&t.cpu_request)),
                    ("memory".to_string(), q(&t.memory_request)),
                ]
                .into(),
            ),
            limits: Some(limits),
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
