//! Command-line flags (each also an environment variable) and what follows from them.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use llmesh_api::duration::parse_duration;

use crate::injection::inject::SidecarTemplate;
use crate::stores::SecretScope;

fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

/// A Kubernetes resource quantity, checked here so a bad one stops the operator at start
/// instead of failing every injected pod.
fn quantity(s: &str) -> Result<String, String> {
    match crate::injection::inject::annotations::quantity(s) {
        Some(_) => Ok(s.to_string()),
        None => Err(format!(
            "`{s}` is not a Kubernetes quantity (e.g. 50m or 0.5 for CPU, 128Mi for memory)"
        )),
    }
}

/// The llmesh operator: reconciles LLMRoute and LLMBudget, pushes config to sidecars over
/// HTTPS long-polls, and injects sidecars into pods that opt in.
#[derive(Parser, Debug, Clone)]
#[command(name = "llmesh-operator", version, about)]
pub struct Settings {
    /// The operator's namespace (its Lease and TLS Secret live here).
    #[arg(long, env = "POD_NAMESPACE", default_value = "llmesh-system")]
    pub namespace: String,

    /// This replica's identity in the leader Lease. Default: the host name.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// HTTPS address for sidecars (snapshot long-poll) and the API server (webhook).
    #[arg(long, env = "LLMESH_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,

    /// Plain-HTTP address for /metrics, /healthz and /readyz.
    #[arg(long, env = "LLMESH_ADMIN_LISTEN", default_value = "0.0.0.0:8080")]
    pub admin_listen: SocketAddr,

    /// The operator's Service name: the serving certificate covers its DNS names, and injected
    /// sidecars connect to it.
    #[arg(long, env = "LLMESH_SERVICE", default_value = "llmesh-operator")]
    pub service: String,

    /// Port of the Service, for the URL injected sidecars use.
    #[arg(long, env = "LLMESH_SERVICE_PORT", default_value_t = 8443)]
    pub service_port: u16,

    /// URL injected sidecars poll. Default: https://SERVICE.NAMESPACE.svc:SERVICE_PORT.
    #[arg(long, env = "LLMESH_OPERATOR_URL")]
    pub operator_url: Option<String>,

    /// More names (DNS or IP) for the serving certificate (repeatable, comma-separated).
    #[arg(long = "tls-san", env = "LLMESH_TLS_SANS", value_delimiter = ',')]
    pub tls_sans: Vec<String>,

    /// The Secret holding the operator's CA and serving certificate.
    #[arg(long, env = "LLMESH_TLS_SECRET", default_value = "llmesh-operator-tls")]
    pub tls_secret: String,

    /// Serve `tls.crt` and `tls.key` from this directory and hand sidecars its `ca.crt`, instead
    /// of making a CA and keeping it in `--tls-secret`: for a certificate another issuer keeps,
    /// such as a cert-manager Certificate's Secret mounted here. The files are re-read every
    /// `--cert-check-interval` (the issuer renews them), and the webhook's `caBundle` is left to
    /// that issuer's CA injector (cert-manager's `cert-manager.io/inject-ca-from` annotation).
    #[arg(long, env = "LLMESH_TLS_CERT_DIR")]
    pub tls_cert_dir: Option<std::path::PathBuf>,

    /// Lifetime of a serving certificate; renewed when a third is left.
    #[arg(long, default_value = "2160h", value_parser = duration)]
    pub cert_validity: Duration,

    /// How often replicas check the TLS Secret (or `--tls-cert-dir`) for a renewed certificate.
    #[arg(long, default_value = "1m", value_parser = duration)]
    pub cert_check_interval: Duration,

    /// MutatingWebhookConfiguration whose caBundle the leader keeps current ("" for none).
    #[arg(
        long,
        env = "LLMESH_WEBHOOK_CONFIG",
        default_value = "llmesh-sidecar-injector"
    )]
    pub webhook_config: String,

    /// Name of the leader Lease.
    #[arg(long, default_value = "llmesh-operator-leader")]
    pub lease_name: String,

    /// How long the leader Lease lasts without renewal.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub lease_duration: Duration,

    /// How often the Lease is renewed or tried.
    #[arg(long, default_value = "2s", value_parser = duration)]
    pub lease_retry: Duration,

    /// Image of the injected sidecar.
    #[arg(
        long,
        env = "LLMESH_SIDECAR_IMAGE",
        default_value = concat!("ghcr.io/llmesh/llmesh-sidecar:", env!("CARGO_PKG_VERSION"))
    )]
    pub sidecar_image: String,

    /// imagePullPolicy of the injected sidecar (unset: the kubelet's default).
    #[arg(long, env = "LLMESH_SIDECAR_PULL_POLICY")]
    pub sidecar_pull_policy: Option<String>,

    /// Loopback port the injected sidecar listens on (OPENAI_BASE_URL points here).
    #[arg(long, env = "LLMESH_SIDECAR_PORT", default_value_t = 4000)]
    pub sidecar_port: u16,

    /// Port of the injected sidecar's admin listener on the pod IP (/metrics, /healthz,
    /// /readyz; the containerPort named llmesh-admin, which its probes use).
    #[arg(long, env = "LLMESH_SIDECAR_ADMIN_PORT", default_value_t = 4001)]
    pub sidecar_admin_port: u16,

    /// CPU request of the injected sidecar.
    #[arg(long, env = "LLMESH_SIDECAR_CPU_REQUEST", default_value = "50m", value_parser = quantity)]
    pub sidecar_cpu_request: String,

    /// CPU limit of the injected sidecar (unset: none; throttling adds latency).
    #[arg(long, env = "LLMESH_SIDECAR_CPU_LIMIT", value_parser = quantity)]
    pub sidecar_cpu_limit: Option<String>,

    /// Memory request of the injected sidecar.
    #[arg(long, env = "LLMESH_SIDECAR_MEMORY_REQUEST", default_value = "32Mi", value_parser = quantity)]
    pub sidecar_memory_request: String,

    /// Memory limit of the injected sidecar.
    #[arg(long, env = "LLMESH_SIDECAR_MEMORY_LIMIT", default_value = "128Mi", value_parser = quantity)]
    pub sidecar_memory_limit: String,

    /// Generation requests in flight at once in each injected sidecar (its --max-in-flight;
    /// 0: no limit).
    #[arg(long, env = "LLMESH_SIDECAR_MAX_IN_FLIGHT", default_value_t = 1024)]
    pub sidecar_max_in_flight: usize,

    /// Log format of the injected sidecars.
    #[arg(long, env = "LLMESH_SIDECAR_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub sidecar_log_format: String,

    /// User and group id the sidecar runs as (the image's non-root user).
    #[arg(long, default_value_t = 65532)]
    pub sidecar_run_as: i64,

    /// How long in-flight requests may take after SIGTERM.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub shutdown_grace: Duration,

    /// Read Secrets only in these namespaces (comma-separated), one watch each, instead of in
    /// every namespace. Routes elsewhere that reference a Secret are reported not resolved.
    /// Pair it with a Role and RoleBinding per namespace (the chart's `secrets.namespaces`, as in
    /// `deploy/rendered-namespaced.yaml`) instead of the chart's default cluster-wide Secret rule.
    /// Empty: every namespace.
    #[arg(
        long = "secret-namespaces",
        env = "LLMESH_SECRET_NAMESPACES",
        value_delimiter = ','
    )]
    pub secret_namespaces: Vec<String>,

    /// Log format.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

impl Settings {
    /// The replica identity: `--identity`/`POD_NAME`, else the host name plus the process id.
    pub fn identity(&self) -> String {
        self.identity.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "llmesh-operator".into());
            format!("{host}-{}", std::process::id())
        })
    }

    /// Names the serving certificate covers: the Service's DNS names plus `--tls-san`.
    pub fn tls_names(&self) -> BTreeSet<String> {
        let (s, ns) = (&self.service, &self.namespace);
        let mut names: BTreeSet<String> = [
            s.clone(),
            format!("{s}.{ns}"),
            format!("{s}.{ns}.svc"),
            format!("{s}.{ns}.svc.cluster.local"),
        ]
        .into();
        names.extend(self.tls_sans.iter().filter(|n| !n.is_empty()).cloned());
        names
    }

    /// The URL injected sidecars poll.
    pub fn operator_url(&self) -> String {
        self.operator_url.clone().unwrap_or_else(|| {
            format!(
                "https://{}.{}.svc:{}",
                self.service, self.namespace, self.service_port
            )
        })
    }

    /// Where Secrets are read: every namespace, or the listed ones.
    pub fn secret_scope(&self) -> SecretScope {
        SecretScope::from_list(&self.secret_namespaces)
    }

    /// The sidecar the webhook injects (the CA is filled in per request).
    pub fn sidecar_template(&self) -> SidecarTemplate {
        SidecarTemplate {
            image: self.sidecar_image.clone(),
            image_pull_policy: self.sidecar_pull_policy.clone(),
            operator_url: self.operator_url(),
            ca_pem: String::new(),
            port: self.sidecar_port,
            admin_port: self.sidecar_admin_port,
            cpu_request: self.sidecar_cpu_request.clone(),
            cpu_limit: self.sidecar_cpu_limit.clone(),
            memory_request: self.sidecar_memory_request.clone(),
            memory_limit: self.sidecar_memory_limit.clone(),
            max_in_flight: self.sidecar_max_in_flight,
            log_format: self.sidecar_log_format.clone(),
            log_level: None,
            run_as: self.sidecar_run_as,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_and_url_follow_the_namespace() {
        let s = Settings::parse_from([
            "llmesh-operator",
            "--namespace",
            "mesh",
            "--tls-san",
            "127.0.0.1,localhost",
        ]);
        let names = s.tls_names();
        for n in [
            "llmesh-operator.mesh.svc",
            "llmesh-operator.mesh.svc.cluster.local",
            "127.0.0.1",
            "localhost",
        ] {
            assert!(names.contains(n), "{n} missing from {names:?}");
        }
        assert_eq!(s.operator_url(), "https://llmesh-operator.mesh.svc:8443");
        assert_eq!(s.sidecar_template().operator_url, s.operator_url());
        assert_eq!(s.secret_scope(), SecretScope::Cluster);
    }

    #[test]
    fn sidecar_defaults_come_from_flags_and_bad_quantities_stop_the_start() {
        let s = Settings::parse_from(["llmesh-operator"]);
        let t = s.sidecar_template();
        assert_eq!((t.admin_port, t.max_in_flight), (4001, 1024));
        assert_eq!((t.cpu_limit, t.log_format.as_str()), (None, "text"));
        let s = Settings::parse_from([
            "llmesh-operator",
            "--sidecar-admin-port=9100",
            "--sidecar-cpu-limit=500m",
            "--sidecar-max-in-flight=64",
            "--sidecar-log-format=json",
        ]);
        let t = s.sidecar_template();
        assert_eq!((t.admin_port, t.max_in_flight), (9100, 64));
        assert_eq!(t.cpu_limit.as_deref(), Some("500m"));
        assert_eq!(t.log_format, "json");
        let err = Settings::try_parse_from(["llmesh-operator", "--sidecar-cpu-limit=lots"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--sidecar-cpu-limit") && err.contains("not a Kubernetes quantity"),
            "{err}"
        );
    }

    #[test]
    fn secret_namespaces_narrow_the_scope() {
        let s = Settings::parse_from(["llmesh-operator", "--secret-namespaces", "team-b,team-a,"]);
        assert_eq!(
            s.secret_scope(),
            SecretScope::Namespaces(["team-a".to_string(), "team-b".to_string()].into())
        );
        assert!(s.secret_scope().covers("team-a"));
        assert!(!s.secret_scope().covers("kube-system"));
        assert!(SecretScope::Cluster.covers("kube-system"));
    }
}
