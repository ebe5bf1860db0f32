//! `run`: the gRPC services (classifier, health, reflection v1 and v1alpha), the metrics
//! listener, model loading in the background, and graceful shutdown.
//!
//! Listeners are injected: `main` binds the configured addresses, tests bind port 0.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use tokio::{net::TcpListener, sync::watch};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{service::interceptor::InterceptedService, transport::Server};
use tonic_health::ServingStatus;
use tracing::{error, info, warn};

use crate::{
    auth::{BearerAuth, Tokens},
    cli::ServeArgs,
    health::{self, model_service},
    pb::{self, classifier_server::ClassifierServer},
    repository::{self, Repository},
    runtime::Runtime,
    service::ClassifierService,
};

/// Runs the server until `shutdown` resolves (then drains) or a model fails to load.
pub async fn run(
    args: ServeArgs,
    runtime: Runtime,
    grpc: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // The recorder must exist before any metric handle is created (model discovery makes them).
    let metrics_handle = metrics_listener.as_ref().map(|_| crate::metrics::install());
    let repo = Arc::new(repository::discover(&args)?);
    info!(
        models = %repo.models.keys().cloned().collect::<Vec<_>>().join(","),
        default = %repo.default_model,
        ort = %runtime.version,
        library = %runtime.library.display(),
        "model repository"
    );

    let (reporter, health_service) = tonic_health::server::health_reporter();
    health::set_overall(&reporter, ServingStatus::NotServing).await;
    for name in repo.models.keys() {
        reporter
            .set_service_status(model_service(name), ServingStatus::NotServing)
            .await;
    }

    // Stop signal shared by the gRPC server, the metrics listener and the loader.
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    if let (Some(listener), Some(handle)) = (metrics_listener, metrics_handle) {
        info!(addr = %listener.local_addr()?, "metrics listening on /metrics");
        tokio::spawn(crate::metrics::serve(
            listener,
            handle,
            stopped(stop_rx.clone()),
        ));
    }

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building reflection v1")?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("building reflection v1alpha")?;

    let draining = Arc::new(AtomicBool::new(false));
    let service = ClassifierService::new(repo.clone(), args.limits.clone(), draining.clone());
    let classifier = ClassifierServer::new(service)
        .max_decoding_message_size(args.limits.max_message_bytes)
        .max_encoding_message_size(64 << 20);

    // Access control: bearer tokens on inference (health and reflection by choice), TLS.
    let tokens = Tokens::load(&args.security)?;
    let sec = &args.security;
    if tokens.enabled() {
        info!(
            health = sec.auth_health,
            reflection = sec.auth_reflection,
            "bearer-token authentication on"
        );
    }
    let classifier = InterceptedService::new(classifier, BearerAuth::new(tokens.clone(), true));
    let health_service = InterceptedService::new(
        health_service,
        BearerAuth::new(tokens.clone(), sec.auth_health),
    );
    let reflection_v1 = InterceptedService::new(
        reflection_v1,
        BearerAuth::new(tokens.clone(), sec.auth_reflection),
    );
    let reflection_v1alpha = InterceptedService::new(
        reflection_v1alpha,
        BearerAuth::new(tokens, sec.auth_reflection),
    );

    let addr = grpc.local_addr()?;
    let mut builder = Server::builder();
    if let Some(tls) = crate::auth::tls_config(sec)? {
        info!(mutual = sec.tls_client_ca.is_some(), "TLS on");
        builder = builder
            .tls_config(tls)
            .context("invalid TLS configuration")?;
    }
    let mut builder = builder.layer(tower::util::MapRequestLayer::new(
        crate::service::stamp_arrival,
    ));
    let router = builder
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(classifier);
    let server = tokio::spawn(
        router.serve_with_incoming_shutdown(TcpListenerStream::new(grpc), stopped(stop_rx.clone())),
    );
    info!(%addr, "gRPC listening");

    // Load models in the background; health turns SERVING per model as each is ready.
    let (load_tx, mut load_rx) = tokio::sync::mpsc::channel::<anyhow::Result<()>>(1);
    {
        let repo = repo.clone();
        let reporter = reporter.clone();
        let require_gpu = args.require_gpu;
        tokio::spawn(async move {
            let result = load_all(&repo, &runtime, require_gpu, &reporter).await;
            if result.is_ok() {
                health::set_overall(&reporter, ServingStatus::Serving).await;
                info!("all models ready: SERVING");
            }
            let _ = load_tx.send(result).await;
        });
    }

    tokio::pin!(shutdown);
    let mut load_error = None;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(result) = load_rx.recv() => if let Err(e) = result {
                error!(error = %format!("{e:#}"), "model loading failed; stopping");
                load_error = Some(e);
                break;
            },
        }
    }

    // Drain: fail health first (probes and load balancers stop sending), refuse new calls,
    // let in-flight work finish within the grace period.
    draining.store(true, Ordering::Release);
    health::set_overall(&reporter, ServingStatus::NotServing).await;
    for name in repo.models.keys() {
        reporter
            .set_service_status(model_service(name), ServingStatus::NotServing)
            .await;
    }
    let _ = stop_tx.send(true);
    let grace = Duration::from_secs(args.drain_timeout_secs);
    match tokio::time::timeout(grace, server).await {
        Ok(Ok(Ok(()))) => info!("drained; exiting"),
        Ok(Ok(Err(e))) => warn!(error = %e, "gRPC server ended with an error"),
        Ok(Err(e)) => warn!(error = %e, "gRPC server task failed"),
        Err(_) => warn!(
            secs = args.drain_timeout_secs,
            "drain timeout passed with requests still in flight; exiting"
        ),
    }
    match load_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

async fn load_all(
    repo: &Arc<Repository>,
    runtime: &Runtime,
    require_gpu: bool,
    reporter: &tonic_health::server::HealthReporter,
) -> anyhow::Result<()> {
    for (name, entry) in &repo.models {
        let entry = entry.clone();
        let rt = runtime.clone();
        tokio::task::spawn_blocking(move || repository::load_model(&rt, &entry, require_gpu))
            .await
            .context("model loading task failed")??;
        reporter
            .set_service_status(model_service(name), ServingStatus::Serving)
            .await;
    }
    Ok(())
}
