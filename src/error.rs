//! The errors of the request path and their single mapping to gRPC statuses.

use tonic::{Code, Status};

/// Everything that can go wrong while serving one request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong: bad image bytes, wrong tensor shape, bad field.
    #[error("{0}")]
    InvalidArgument(String),
    /// No model of that name is served.
    #[error("model {0:?} is not served here; ListModels shows the served models")]
    ModelNotFound(String),
    /// The model's queue is full; the client should back off and retry.
    #[error("model {model:?} queue is full ({capacity} images waiting); retry later")]
    QueueFull { model: String, capacity: usize },
    /// The request's deadline passed before it was answered.
    #[error("deadline exceeded while {0}")]
    DeadlineExceeded(&'static str),
    /// The server is draining or the model is not ready.
    #[error("{0}")]
    Unavailable(String),
    /// A limit was exceeded (message size, images per request, pixels).
    #[error("{0}")]
    ResourceExhausted(String),
    /// Missing or wrong credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// A bug or a runtime failure; details are logged.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The gRPC status code this error maps to.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::ModelNotFound(_) => Code::NotFound,
            Error::QueueFull { .. } | Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::Internal(_) => Code::Internal,
        }
    }

    /// The failure reason used as a metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidArgument(_) | Error::ModelNotFound(_) => "bad_input",
            Error::QueueFull { .. } => "queue_full",
            Error::ResourceExhausted(_) => "limit",
            Error::DeadlineExceeded(_) => "deadline",
            Error::Unavailable(_) => "unavailable",
            Error::Unauthenticated(_) => "unauthenticated",
            Error::Internal(_) => "internal",
        }
    }

    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        Status::new(err.code(), err.to_string())
    }
}
