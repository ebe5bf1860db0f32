//! The `wrn.v1.Classifier` service: validate, resolve the model, preprocess off the async
//! runtime, submit to the batcher, and answer top-k per image in request order.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::Semaphore;
use tonic::{Request, Response, Status, metadata::MetadataValue};
use tracing::{Instrument, info_span, warn};

use crate::{
    batcher,
    cli::LimitArgs,
    error::Error,
    model::topk::{softmax, top_k},
    pb::{self, classifier_server::Classifier},
    repository::{ModelEntry, Repository},
};

/// Shared state of the gRPC service.
#[derive(Debug, Clone)]
pub struct ClassifierService {
    repo: Arc<Repository>,
    limits: LimitArgs,
    /// Bounds concurrent decode/resize work to the number of cores.
    preprocess_slots: Arc<Semaphore>,
    draining: Arc<AtomicBool>,
}

const DEFAULT_TOP_K: u32 = 5;
/// How much earlier than the client's deadline the server gives up (see `deadline`).
pub const DEADLINE_MARGIN: Duration = Duration::from_millis(2);

impl ClassifierService {
    pub fn new(repo: Arc<Repository>, limits: LimitArgs, draining: Arc<AtomicBool>) -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        Self {
            repo,
            limits,
            preprocess_slots: Arc::new(Semaphore::new(cores)),
            draining,
        }
    }

    /// The request's deadline: the client's `grpc-timeout` or the server's limit, whichever
    /// is shorter, counted from the call's arrival (before its body is read). tonic's
    /// transport also arms a timer for `grpc-timeout` at arrival and answers CANCELLED when
    /// it fires, so ours fires `DEADLINE_MARGIN` earlier: the client gets
    /// DEADLINE_EXCEEDED from the server, never late.
    fn deadline<T>(&self, request: &Request<T>) -> Instant {
        let server_max = Duration::from_secs_f64(self.limits.request_timeout_secs.max(0.001));
        let client = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let timeout = match client {
            Some(c) if c <= server_max => c.saturating_sub(DEADLINE_MARGIN),
            _ => server_max,
        };
        let arrived = request
            .extensions()
            .get::<Arrival>()
            .map_or_else(batcher::now, |a| a.0);
        arrived + timeout
    }

    async fn classify_inner(
        &self,
        req: pb::ClassifyRequest,
        deadline: Instant,
        entry: &Arc<ModelEntry>,
    ) -> Result<pb::ClassifyResponse, Error> {
        if self.draining.load(Ordering::Acquire) {
            return Err(Error::Unavailable(
                "server is shutting down; retry on another replica".into(),
            ));
        }
        let loaded = entry.loaded().ok_or_else(|| {
            Error::Unavailable(format!(
                "model {:?} is still loading; retry shortly",
                entry.config.name
            ))
        })?;
        let classes = loaded.info.num_classes;
        let k = if req.top_k == 0 {
            DEFAULT_TOP_K.min(classes as u32)
        } else {
            req.top_k
        };
        if k as usize > classes {
            return Err(Error::invalid(format!(
                "top_k is {k} but model {:?} has {classes} classes",
                entry.config.name
            )));
        }
        let has_images = !req.images.is_empty();
        let slots = match (has_images, req.tensor) {
            (true, Some(_)) => return Err(Error::invalid("set either images or tensor, not both")),
            (false, None) => {
                return Err(Error::invalid(
                    "request has no images and no tensor; set images (encoded bytes) or tensor",
                ));
            }
            (false, Some(t)) => self.tensor_slots(&t, entry)?,
            (true, None) => {
                // Backpressure at the door: refuse before spending any decoding on it.
                loaded.batcher.admit(req.images.len(), Some(deadline))?;
                self.image_slots(req.images, entry, deadline).await?
            }
        };
        let n = slots.len();
        let receivers = loaded.batcher.submit(slots, Some(deadline))?;
        entry.metrics.images.increment(n as u64);
        let mut results = Vec::with_capacity(n);
        let wait = async {
            let mut out = Vec::with_capacity(n);
            for rx in receivers {
                let logits = rx
                    .await
                    .map_err(|_| Error::Internal("model worker dropped the request".into()))??;
                out.push(logits);
            }
            Ok::<_, Error>(out)
        };
        let logits = tokio::time::timeout_at(deadline.into(), wait)
            .await
            .map_err(|_| Error::DeadlineExceeded("waiting for the model"))??;
        for l in logits {
            let probs = softmax(&l);
            let classes = top_k(&probs, k as usize)
                .into_iter()
                .map(|(i, p)| pb::ClassScore {
                    index: i as u32,
                    label: entry.labels.get(i).cloned().unwrap_or_default(),
                    probability: p,
                })
                .collect();
            results.push(pb::Classification { classes });
        }
        Ok(pb::ClassifyResponse {
            model: entry.config.name.clone(),
            model_version: entry.config.version.clone(),
            results,
        })
    }

    /// Decodes and preprocesses every image in parallel on blocking workers.
    async fn image_slots(
        &self,
        images: Vec<Vec<u8>>,
        entry: &Arc<ModelEntry>,
        deadline: Instant,
    ) -> Result<Vec<Vec<f32>>, Error> {
        let max_images = self.limits.max_images_per_request;
        if images.len() > max_images {
            return Err(Error::ResourceExhausted(format!(
                "request has {} images; at most {max_images} are accepted per request",
                images.len()
            )));
        }
        for (i, img) in images.iter().enumerate() {
            if img.len() > self.limits.max_image_bytes {
                return Err(Error::ResourceExhausted(format!(
                    "image {i} is {} bytes; at most {} bytes are accepted per image",
                    img.len(),
                    self.limits.max_image_bytes
                )));
            }
        }
        // A JoinSet aborts the tasks still waiting for a preprocessing slot when this request
        // ends early (deadline, cancellation, a bad image); a decode that has not started yet
        // checks that the request is still wanted, so abandoned requests leave no work behind.
        let wanted = Arc::new(());
        let mut tasks = tokio::task::JoinSet::new();
        for (i, img) in images.into_iter().enumerate() {
            let pre = entry.preprocessor.clone();
            let slots = self.preprocess_slots.clone();
            let hist = entry.metrics.preprocess.clone();
            let still_wanted = Arc::downgrade(&wanted);
            tasks.spawn(async move {
                let result = async {
                    let _permit = slots
                        .acquire_owned()
                        .await
                        .map_err(|_| Error::Unavailable("server is shutting down".into()))?;
                    tokio::task::spawn_blocking(move || {
                        if still_wanted.strong_count() == 0 || batcher::now() >= deadline {
                            return Err(Error::DeadlineExceeded("preprocessing images"));
                        }
                        let started = Instant::now();
                        let out = pre.run_to_vec(&img);
                        hist.record(started.elapsed().as_secs_f64());
                        out
                    })
                    .await
                    .map_err(|e| Error::Internal(format!("preprocessing task failed: {e}")))?
                }
                .await;
                (i, result)
            });
        }
        let n = tasks.len();
        let all = async {
            let mut out: Vec<Option<Vec<f32>>> = vec![None; n];
            while let Some(done) = tasks.join_next().await {
                let (i, result) =
                    done.map_err(|e| Error::Internal(format!("preprocessing task failed: {e}")))?;
                match result {
                    Ok(slot) => out[i] = Some(slot),
                    Err(Error::InvalidArgument(m)) => {
                        return Err(Error::InvalidArgument(format!("image {i}: {m}")));
                    }
                    Err(Error::ResourceExhausted(m)) => {
                        return Err(Error::ResourceExhausted(format!("image {i}: {m}")));
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(out
                .into_iter()
                .map(|s| s.expect("every image was preprocessed"))
                .collect())
        };
        let result = tokio::time::timeout_at(deadline.into(), all)
            .await
            .map_err(|_| Error::DeadlineExceeded("preprocessing images"))?;
        drop(wanted);
        result
    }

    /// Validates a preprocessed tensor strictly and splits it into per-image slots.
    fn tensor_slots(
        &self,
        t: &pb::Tensor,
        entry: &Arc<ModelEntry>,
    ) -> Result<Vec<Vec<f32>>, Error> {
        if t.dtype != pb::DataType::Float32 as i32 {
            return Err(Error::invalid(format!(
                "tensor.dtype must be DATA_TYPE_FLOAT32, got {}",
                pb::DataType::try_from(t.dtype)
                    .map(|d| d.as_str_name().to_string())
                    .unwrap_or_else(|_| t.dtype.to_string())
            )));
        }
        let crop = i64::from(entry.config.preprocess.crop);
        let want = format!("[N, 3, {crop}, {crop}]");
        if t.shape.len() != 4
            || t.shape[1] != 3
            || t.shape[2] != crop
            || t.shape[3] != crop
            || t.shape[0] < 1
        {
            return Err(Error::invalid(format!(
                "tensor.shape is {:?}; model {:?} takes {want} with N >= 1",
                t.shape, entry.config.name
            )));
        }
        let n = t.shape[0] as usize;
        if n > self.limits.max_images_per_request {
            return Err(Error::ResourceExhausted(format!(
                "tensor holds {n} images; at most {} are accepted per request",
                self.limits.max_images_per_request
            )));
        }
        let per = 3 * (crop * crop) as usize;
        let total = n * per;
        let values: Vec<f32> = match (t.raw_data.is_empty(), t.float_data.is_empty()) {
            (false, false) => {
                return Err(Error::invalid(
                    "set tensor.raw_data or tensor.float_data, not both",
                ));
            }
            (true, true) => {
                return Err(Error::invalid(
                    "tensor has no data: set raw_data (little-endian float32) or float_data",
                ));
            }
            (false, true) => {
                if t.raw_data.len() != total * 4 {
                    return Err(Error::invalid(format!(
                        "tensor.raw_data has {} bytes; shape {:?} needs {} (float32)",
                        t.raw_data.len(),
                        t.shape,
                        total * 4
                    )));
                }
                t.raw_data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect()
            }
            (true, false) => {
                if t.float_data.len() != total {
                    return Err(Error::invalid(format!(
                        "tensor.float_data has {} values; shape {:?} needs {total}",
                        t.float_data.len(),
                        t.shape
                    )));
                }
                t.float_data.clone()
            }
        };
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::invalid(format!("tensor value {i} is not finite")));
        }
        Ok(values.chunks_exact(per).map(<[f32]>::to_vec).collect())
    }

    fn model_info(&self, entry: &ModelEntry) -> pb::ModelInfo {
        let c = &entry.config;
        let loaded = entry.loaded();
        let (input_name, input_shape, output_name, classes, provider, state) = match &loaded {
            Some(l) => (
                l.info.input_name.clone(),
                l.info.input_shape.clone(),
                l.info.output_name.clone(),
                l.info.num_classes as u32,
                l.provider.clone(),
                pb::ModelState::Ready,
            ),
            None => (
                String::new(),
                vec![],
                String::new(),
                entry.labels.len() as u32,
                String::new(),
                pb::ModelState::Loading,
            ),
        };
        pb::ModelInfo {
            name: c.name.clone(),
            version: c.version.clone(),
            architecture: c.architecture.clone(),
            weights: c.weights.clone(),
            pretrained: c.pretrained,
            is_default: c.name == self.repo.default_model,
            input_name,
            input_shape,
            output_name,
            num_classes: classes,
            preprocessing: Some(pb::Preprocessing {
                resize: c.preprocess.resize,
                crop: c.preprocess.crop,
                interpolation: c.preprocess.interpolation.clone(),
                mean: c.preprocess.mean.to_vec(),
                std: c.preprocess.std.to_vec(),
            }),
            batching: Some(pb::Batching {
                max_batch_size: c.batching.max_batch_size as u32,
                max_queue_delay_us: (c.batching.max_queue_delay_ms * 1000.0).round() as u64,
                queue_capacity: c.batching.queue_capacity as u32,
                instances: c.batching.instances as u32,
            }),
            execution_provider: provider,
            requested_execution_providers: c.runtime.execution_providers.clone(),
            state: state as i32,
        }
    }
}

/// When a call arrived, stamped by [`stamp_arrival`] before tonic reads its body.
#[derive(Debug, Clone, Copy)]
pub struct Arrival(pub Instant);

/// A tower layer function for `Server::builder().layer(...)`: records each call's arrival.
pub fn stamp_arrival<B>(
    mut req: tonic::codegen::http::Request<B>,
) -> tonic::codegen::http::Request<B> {
    req.extensions_mut().insert(Arrival(batcher::now()));
    req
}

/// Parses the `grpc-timeout` header: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The request id: the caller's `x-request-id` when it is a sane token, else a new UUID.
pub fn request_id(metadata: &tonic::metadata::MetadataMap) -> String {
    metadata
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

fn with_request_id<T>(mut resp: Response<T>, id: &str) -> Response<T> {
    if let Ok(v) = MetadataValue::try_from(id) {
        resp.metadata_mut().insert("x-request-id", v);
    }
    resp
}

fn status_with_id(err: Error, id: &str) -> Status {
    let mut s: Status = err.into();
    if let Ok(v) = MetadataValue::try_from(id) {
        s.metadata_mut().insert("x-request-id", v);
    }
    s
}

/// Decrements the in-flight gauge however the request ends; a request dropped before it
/// finished (the client cancelled or went away) is counted as CANCELLED.
struct InFlight<'a> {
    entry: &'a ModelEntry,
    started: Instant,
    finished: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.entry.metrics.in_flight.decrement(1.0);
        if !self.finished {
            self.entry
                .metrics
                .request("Classify", tonic::Code::Cancelled, self.started.elapsed());
            self.entry.metrics.failure("cancelled");
        }
    }
}

#[tonic::async_trait]
impl Classifier for ClassifierService {
    async fn classify(
        &self,
        request: Request<pb::ClassifyRequest>,
    ) -> Result<Response<pb::ClassifyResponse>, Status> {
        let started = Instant::now();
        let id = request_id(request.metadata());
        let deadline = self.deadline(&request);
        let req = request.into_inner();
        let entry = match self.repo.get(&req.model) {
            Ok(e) => e.clone(),
            Err(e) => {
                tracing::info!(request_id = %id, model = %req.model, error = %e, "classify rejected");
                return Err(status_with_id(e, &id));
            }
        };
        let span = info_span!("classify", request_id = %id, model = %entry.config.name);
        async move {
            entry.metrics.in_flight.increment(1.0);
            let mut guard = InFlight {
                entry: &entry,
                started,
                finished: false,
            };
            let n_images = req.images.len();
            let result = self.classify_inner(req, deadline, &entry).await;
            guard.finished = true;
            drop(guard);
            let code = result
                .as_ref()
                .map_or_else(|e| e.code(), |_| tonic::Code::Ok);
            entry.metrics.request("Classify", code, started.elapsed());
            match result {
                Ok(resp) => {
                    tracing::debug!(
                        images = n_images,
                        ms = started.elapsed().as_millis() as u64,
                        "classified"
                    );
                    Ok(with_request_id(Response::new(resp), &id))
                }
                Err(e) => {
                    entry.metrics.failure(e.reason());
                    match &e {
                        Error::Internal(_) => warn!(error = %e, "classify failed"),
                        // Load shedding is counted in metrics; logging each one at info
                        // would flood the log exactly when the server is overloaded.
                        Error::QueueFull { .. }
                        | Error::DeadlineExceeded(_)
                        | Error::Unavailable(_) => {
                            tracing::debug!(code = ?e.code(), error = %e, "classify shed")
                        }
                        _ => tracing::info!(code = ?e.code(), error = %e, "classify rejected"),
                    }
                    Err(status_with_id(e, &id))
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn list_models(
        &self,
        _request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let models = self
            .repo
            .models
            .values()
            .map(|e| self.model_info(e))
            .collect();
        Ok(Response::new(pb::ListModelsResponse {
            default_model: self.repo.default_model.clone(),
            models,
        }))
    }

    async fn get_model(
        &self,
        request: Request<pb::GetModelRequest>,
    ) -> Result<Response<pb::ModelInfo>, Status> {
        let entry = self.repo.get(&request.get_ref().model)?;
        Ok(Response::new(self.model_info(entry)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("100u"), Some(Duration::from_micros(100)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
    }

    #[test]
    fn request_id_is_taken_or_generated() {
        let mut md = tonic::metadata::MetadataMap::new();
        md.insert("x-request-id", "abc-123".parse().unwrap());
        assert_eq!(request_id(&md), "abc-123");
        let generated = request_id(&tonic::metadata::MetadataMap::new());
        assert_eq!(generated.len(), 36);
    }
}
