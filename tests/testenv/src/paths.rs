//! Where the control plane's binaries live.
//!
//! kube-apiserver, kubectl and helm are installed by `tests/controlplane/install.sh` into
//! `${LLMESH_CACHE:-<repo>/.cache}/bin`; etcd comes from the `etcd-bin-vendored` crate.
//! Each binary can be overridden with an environment variable.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Environment variable overriding the cache directory (default: `<repo>/.cache`).
pub const CACHE_ENV: &str = "LLMESH_CACHE";
/// Environment variable overriding the kube-apiserver binary.
pub const KUBE_APISERVER_ENV: &str = "LLMESH_KUBE_APISERVER";
/// Environment variable overriding the kubectl binary.
pub const KUBECTL_ENV: &str = "LLMESH_KUBECTL";
/// Environment variable overriding the helm binary.
pub const HELM_ENV: &str = "LLMESH_HELM";
/// Environment variable overriding the etcd binary.
pub const ETCD_ENV: &str = "LLMESH_ETCD";

/// The repository root (two levels above this crate's manifest).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.to_path_buf())
}

/// The cache directory that `tests/controlplane/install.sh` fills: `$LLMESH_CACHE` or `<repo>/.cache`.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os(CACHE_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => repo_root().join(".cache"),
    }
}

/// The install script that builds or downloads the control plane's binaries.
pub fn install_script() -> PathBuf {
    repo_root().join("tests/controlplane/install.sh")
}

fn installed_tool(env_var: &str, name: &str) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(env_var).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!(
                "{env_var}={} does not name a file; unset it or point it at a {name} binary",
                path.display()
            );
        }
        return Ok(path);
    }
    let path = cache_dir().join("bin").join(name);
    if !path.is_file() {
        bail!(
            "{name} not found at {}; run `{}` (it builds or downloads the test control plane's binaries \
             into the cache once; the first kube-apiserver build takes 7-11 minutes), or set {env_var}",
            path.display(),
            install_script().display(),
        );
    }
    Ok(path)
}

/// Path of the kube-apiserver binary (`$LLMESH_KUBE_APISERVER` or `<cache>/bin/kube-apiserver`).
pub fn kube_apiserver_path() -> Result<PathBuf> {
    installed_tool(KUBE_APISERVER_ENV, "kube-apiserver")
}

/// Path of the kubectl binary (`$LLMESH_KUBECTL` or `<cache>/bin/kubectl`).
pub fn kubectl_path() -> Result<PathBuf> {
    installed_tool(KUBECTL_ENV, "kubectl")
}

/// Path of the helm binary (`$LLMESH_HELM` or `<cache>/bin/helm`).
pub fn helm_path() -> Result<PathBuf> {
    installed_tool(HELM_ENV, "helm")
}

/// Path of the etcd binary (`$LLMESH_ETCD` or the one vendored by the `etcd-bin-vendored` crate).
pub fn etcd_path() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(ETCD_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let path = etcd_bin_vendored::etcd_bin_path()
        .map_err(|e| anyhow::anyhow!("{e}; set {ETCD_ENV} to an etcd >= 3.5.13 binary"))?;
    if !path.is_file() {
        bail!(
            "the etcd binary vendored by etcd-bin-vendored is missing at {}; \
             run `cargo clean -p etcd-bin-vendored-linux-amd64` and rebuild, or set {ETCD_ENV}",
            path.display()
        );
    }
    path.canonicalize()
        .with_context(|| format!("resolving {}", path.display()))
}
