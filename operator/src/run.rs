//! Puts the operator together: watches and the hub on every replica, the TLS listener for
//! sidecars and the webhook, the admin listener, leader election, and the controllers and
//! webhook-caBundle upkeep while leading.

use std::future::Future;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use kube::Client;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use crate::decisions::controller;
use crate::injection::webhook::Injector;
use crate::leader::{self, LeaseConfig};
use crate::metrics::Metrics;
use crate::pki::tls::{self, TlsManager};
use crate::push::auth::Authenticator;
use crate::push::hub::Hub;
use crate::push::podcheck::PodCheck;
use crate::push::poll::Poller;
use crate::secrets::SecretCache;
use crate::server::{self, Api};
use crate::settings::Settings;
use crate::spend::{self, Accountant, system_clock};
use crate::stores::Stores;

/// Runs the operator until `shutdown` resolves, then stops in order: held polls answer at
/// once, the leader releases its Lease, listeners drain.
pub async fn run(
    settings: Settings,
    client: Client,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let identity = settings.identity();
    let metrics = Arc::new(Metrics::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();

    let changed = Arc::new(Notify::new());
    let stores = Stores::start(
        &client,
        settings.secret_scope(),
        changed.clone(),
        &mut tasks,
    );
    let hub = Hub::new(
        stores.clone(),
        SecretCache::new(client.clone()),
        changed,
        metrics.clone(),
    );
    tasks.spawn(hub.clone().run());

    let source = match &settings.tls_cert_dir {
        Some(dir) => tls::Source::Dir(dir.clone()),
        None => tls::Source::Secret(tls::Params {
            client: client.clone(),
            namespace: settings.namespace.clone(),
            secret: settings.tls_secret.clone(),
            names: settings.tls_names(),
            validity: settings.cert_validity,
            webhook_config: Some(settings.webhook_config.clone()).filter(|w| !w.is_empty()),
        }),
    };
    let tls = TlsManager::start(source, metrics.clone())
        .await
        .context("setting up the serving certificate")?;

    let (leader_tx, leader_rx) = watch::channel(false);
    let elector = tokio::spawn(leader::run(
        client.clone(),
        LeaseConfig {
            namespace: settings.namespace.clone(),
            name: settings.lease_name.clone(),
            identity: identity.clone(),
            duration: settings.lease_duration,
            retry: settings.lease_retry,
        },
        leader_tx,
        metrics.clone(),
        stop_rx.clone(),
    ));
    tasks.spawn(
        tls.clone()
            .maintain(settings.cert_check_interval, leader_rx.clone()),
    );
    tasks.spawn(lead(
        client.clone(),
        hub.clone(),
        stores.clone(),
        metrics.clone(),
        identity.clone(),
        settings.namespace.clone(),
        leader_rx,
    ));

    let api = Arc::new(Api {
        poller: Poller::new(
            hub.clone(),
            Authenticator::new(client.clone(), metrics.clone()),
            PodCheck::new(client.clone(), stores.pods.clone()),
            metrics.clone(),
            stop_rx.clone(),
        ),
        accountant: Arc::new(Accountant::new(
            client.clone(),
            settings.namespace.clone(),
            hub.clone(),
            metrics.clone(),
            &identity,
            system_clock(),
            spend::watch_ledgers(&client, &settings.namespace, &mut tasks),
        )),
        injector: Injector {
            client: client.clone(),
            template: settings.sidecar_template(),
            tls: tls.clone(),
            metrics: metrics.clone(),
            cluster: Default::default(),
        },
    });
    let mut tls_config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(tls.resolver());
    tls_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("listening on {}", settings.listen))?;
    let admin = TcpListener::bind(settings.admin_listen)
        .await
        .with_context(|| format!("listening on {}", settings.admin_listen))?;
    tracing::info!(
        identity = %identity,
        listen = %listener.local_addr()?,
        admin = %admin.local_addr()?,
        sidecars_connect_to = %settings.operator_url(),
        secret_namespaces = ?settings.secret_scope(),
        "llmesh-operator started"
    );

    let ready_hub = hub.clone();
    let ready: Arc<dyn Fn() -> Result<(), String> + Send + Sync> = Arc::new(move || {
        if ready_hub.is_synced() {
            Ok(())
        } else {
            Err("still reading routes, budgets, pods and secrets".into())
        }
    });
    let mut admin_stop = stop_rx.clone();
    tasks.spawn(server::serve_admin(
        admin,
        metrics.clone(),
        ready,
        async move {
            let _ = admin_stop.wait_for(|s| *s).await;
        },
    ));

    let mut tls_stop = stop_rx.clone();
    let serving = server::serve_tls(
        listener,
        Arc::new(tls_config),
        api,
        async move {
            let _ = tls_stop.wait_for(|s| *s).await;
        },
        settings.shutdown_grace,
    );
    let serving = tokio::spawn(serving);
    shutdown.await;
    tracing::info!("shutting down");
    stop_tx.send_replace(true);
    let _ = serving.await;
    // Let the elector release the Lease before the other tasks are cut.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(3), elector).await;
    tasks.abort_all();
    Ok(())
}

/// Runs the controllers during each leader term.
async fn lead(
    client: Client,
    hub: Arc<Hub>,
    stores: Stores,
    metrics: Arc<Metrics>,
    identity: String,
    namespace: String,
    mut leader: watch::Receiver<bool>,
) {
    loop {
        if leader.wait_for(|l| *l).await.is_err() {
            return;
        }
        hub.synced().await;
        let ctx = controller::Context::new(
            client.clone(),
            hub.clone(),
            metrics.clone(),
            &identity,
            &namespace,
            system_clock(),
        );
        tokio::select! {
            () = controller::run(ctx, stores.clone()) => {}
            _ = leader.wait_for(|l| !*l) => {}
        }
        hub.clear_triggers();
    }
}
