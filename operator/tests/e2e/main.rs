//! End-to-end tests of the control plane on a real kube-apiserver and etcd (from
//! `llmesh-testenv`; run `tests/controlplane/install.sh` once): the operator binary as its
//! least-privilege ServiceAccount, the injection webhook called by the API server, and real
//! sidecar processes holding Pod-bound tokens, served by the mock provider.
#![forbid(unsafe_code)]

mod budgets;
mod canary;
mod cert_dir;
mod harness;
mod injection;
mod outage;
mod push;
mod rbac;
mod routes;
mod secret_scope;
mod security;
