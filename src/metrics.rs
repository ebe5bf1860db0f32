//! Every metric name in one place, their descriptions, the bucket layout, and the
//! Prometheus endpoint (its own HTTP listener, separate from gRPC).
//!
//! Names are prefixed `wrn_`; durations are `_seconds` histograms; counters end in
//! `_total`; model metrics carry `model` and `version` labels.

use std::{sync::OnceLock, time::Duration};

use metrics::{
    Counter, Gauge, Histogram, Label, counter, describe_counter, describe_gauge,
    describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

pub const REQUESTS: &str = "wrn_requests_total";
pub const REQUEST_DURATION: &str = "wrn_request_duration_seconds";
pub const IMAGES: &str = "wrn_images_total";
pub const FAILURES: &str = "wrn_failures_total";
pub const BATCHES: &str = "wrn_batches_total";
pub const QUEUE_WAIT: &str = "wrn_queue_wait_seconds";
pub const PREPROCESS: &str = "wrn_preprocess_seconds";
pub const COMPUTE: &str = "wrn_compute_seconds";
pub const BATCH_SIZE: &str = "wrn_batch_size";
pub const QUEUE_DEPTH: &str = "wrn_queue_depth";
pub const IN_FLIGHT: &str = "wrn_requests_in_flight";
pub const INSTANCES_READY: &str = "wrn_model_instances_ready";
pub const BUILD_INFO: &str = "wrn_build_info";
/// Process figures (resident memory, CPU seconds, open fds) come from `metrics-process`
/// with this prefix, e.g. `wrn_process_resident_memory_bytes`.
pub const PROCESS_PREFIX: &str = "wrn_";

/// Latency buckets: 1 ms to 10 s, roughly three per decade.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5,
    10.0,
];
/// Batch size buckets: every power of two up to 1024.
pub const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Registers descriptions (the `# HELP` lines).
pub fn describe() {
    describe_counter!(REQUESTS, "gRPC requests by model, method and status code");
    describe_histogram!(
        REQUEST_DURATION,
        metrics::Unit::Seconds,
        "End-to-end gRPC request latency"
    );
    describe_counter!(IMAGES, "Images accepted into the batch queue");
    describe_counter!(
        FAILURES,
        "Failed requests by reason: bad_input, queue_full, deadline, cancelled, limit, unavailable, unauthenticated, internal"
    );
    describe_counter!(BATCHES, "Batches run by the model");
    describe_histogram!(
        QUEUE_WAIT,
        metrics::Unit::Seconds,
        "Time an image waited in the batch queue"
    );
    describe_histogram!(
        PREPROCESS,
        metrics::Unit::Seconds,
        "Decode and preprocessing time per image"
    );
    describe_histogram!(
        COMPUTE,
        metrics::Unit::Seconds,
        "Model compute time per batch"
    );
    describe_histogram!(BATCH_SIZE, "Images per batch run");
    describe_gauge!(QUEUE_DEPTH, "Images waiting in the model's batch queue");
    describe_gauge!(IN_FLIGHT, "Classify requests being served");
    describe_gauge!(
        INSTANCES_READY,
        "Model instances (sessions) ready, by execution provider"
    );
    describe_gauge!(BUILD_INFO, "Build information; the value is always 1");
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once; later calls return the same handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("latency buckets are non-empty")
                .set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), BATCH_BUCKETS)
                .expect("batch buckets are non-empty")
                .install_recorder()
                .expect("no other metrics recorder is installed");
            describe();
            metrics_process::Collector::new(PROCESS_PREFIX).describe();
            gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            handle
        })
        .clone()
}

/// Renders the exposition text, refreshing process figures first.
pub fn render(handle: &PrometheusHandle) -> String {
    metrics_process::Collector::new(PROCESS_PREFIX).collect();
    handle.render()
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves. A deliberately tiny
/// HTTP/1.1 responder: one request per connection, no keep-alive.
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (mut sock, _) = tokio::select! {
            r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
            _ = &mut shutdown => return,
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while n < buf.len() {
                    match sock.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => {
                            n += k;
                            if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                                break;
                            }
                        }
                    }
                }
            })
            .await;
            if read.is_err() {
                return;
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let (status, ctype, body) = if head.starts_with("GET ")
                && (path == "/metrics" || path.starts_with("/metrics?"))
            {
                (
                    "200 OK",
                    "text/plain; version=0.0.4; charset=utf-8",
                    render(&handle),
                )
            } else {
                (
                    "404 Not Found",
                    "text/plain",
                    "not found: the metrics are at /metrics\n".to_string(),
                )
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}

/// Pre-registered handles for one model (cheap to record, no lookups per call).
#[derive(Clone)]
pub struct ModelMetrics {
    labels: Vec<Label>,
    pub images: Counter,
    pub batches: Counter,
    pub queue_wait: Histogram,
    pub preprocess: Histogram,
    pub compute: Histogram,
    pub batch_size: Histogram,
    pub queue_depth: Gauge,
    pub in_flight: Gauge,
}

impl std::fmt::Debug for ModelMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelMetrics")
            .field("labels", &self.labels)
            .finish()
    }
}

impl ModelMetrics {
    pub fn new(model: &str, version: &str) -> Self {
        let labels = vec![
            Label::new("model", model.to_string()),
            Label::new("version", version.to_string()),
        ];
        // Gauges start at zero so an idle replica exports them (autoscalers read them).
        gauge!(QUEUE_DEPTH, labels.clone()).set(0.0);
        gauge!(IN_FLIGHT, labels.clone()).set(0.0);
        Self {
            images: counter!(IMAGES, labels.clone()),
            batches: counter!(BATCHES, labels.clone()),
            queue_wait: histogram!(QUEUE_WAIT, labels.clone()),
            preprocess: histogram!(PREPROCESS, labels.clone()),
            compute: histogram!(COMPUTE, labels.clone()),
            batch_size: histogram!(BATCH_SIZE, labels.clone()),
            queue_depth: gauge!(QUEUE_DEPTH, labels.clone()),
            in_flight: gauge!(IN_FLIGHT, labels.clone()),
            labels,
        }
    }

    pub fn failure(&self, reason: &'static str) {
        let mut l = self.labels.clone();
        l.push(Label::new("reason", reason));
        counter!(FAILURES, l).increment(1);
    }

    pub fn request(&self, method: &'static str, code: tonic::Code, elapsed: Duration) {
        let mut l = self.labels.clone();
        l.push(Label::new("method", method));
        l.push(Label::new("code", code_name(code)));
        counter!(REQUESTS, l.clone()).increment(1);
        histogram!(REQUEST_DURATION, l).record(elapsed.as_secs_f64());
    }

    pub fn instances_ready(&self, provider: &str) -> Gauge {
        let mut l = self.labels.clone();
        l.push(Label::new("provider", provider.to_string()));
        gauge!(INSTANCES_READY, l)
    }
}

/// gRPC status code names as grpc-go prints them (`OK`, `INVALID_ARGUMENT`, ...).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
