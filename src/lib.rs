//! `wrn`: a gRPC inference server for Wide Residual Networks on ONNX Runtime.
//!
//! The request path, end to end:
//!
//! ```text
//! client --gRPC--> service (validate, resolve model)
//!                  --> preprocess pool (decode, EXIF orient, RGB, resize, crop, normalise)
//!                  --> batcher queue (per model, bounded) --> model instance (ORT session)
//!        <-------- top-k per image <-- softmax <-- batch output split per request
//! ```
//!
//! Modules, in the order a request meets them: [`cli`] and [`config`] (how the server is
//! set up), [`runtime`] (loading ONNX Runtime), [`server`] (listeners, health, reflection,
//! shutdown), [`service`] (the `Classifier` gRPC service), [`preprocess`], [`batcher`],
//! [`model`], and around them [`metrics`], [`client`] and [`bench`].

pub mod auth;
pub mod batcher;
pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
pub mod error;
pub mod health;
pub mod metrics;
pub mod model;
pub mod preprocess;
pub mod repository;
pub mod runtime;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod train;

/// Generated gRPC types for `wrn.v1`.
pub mod pb {
    tonic::include_proto!("wrn.v1");

    /// Encoded descriptor set of `wrn.v1`, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("wrn_descriptor");
}
