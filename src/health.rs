//! Health that follows reality: `grpc.health.v1` says NOT_SERVING until every model is
//! loaded and warmed up, per model under `wrn.v1.Classifier/<model>`, and NOT_SERVING
//! again as soon as draining starts.

use tonic_health::{ServingStatus, server::HealthReporter};

/// The service name of the classifier, as health checks and probes use it.
pub const SERVICE: &str = "wrn.v1.Classifier";

/// Health service name for one model.
pub fn model_service(model: &str) -> String {
    format!("{SERVICE}/{model}")
}

/// Sets the server-wide statuses ("" and the classifier service).
pub async fn set_overall(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    reporter.set_service_status(SERVICE, status).await;
}
