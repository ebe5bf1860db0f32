//! Per-model configuration (`config.toml` beside each model) and its validation.
//!
//! The file is written by `models/export.py` and `wrn train`; unknown keys are errors so a
//! typo never silently falls back to a default.

use std::{path::Path, time::Duration};

use serde::{Deserialize, Serialize};

/// One model's configuration, as stored in `<models-dir>/<name>/config.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub name: String,
    #[serde(default = "default_version")]
    pub version: String,
    #[serde(default)]
    pub architecture: String,
    /// Provenance of the weights, e.g. `IMAGENET1K_V2` or `random-init seed=0`.
    #[serde(default)]
    pub weights: String,
    #[serde(default)]
    pub pretrained: bool,
    #[serde(default = "default_model_file")]
    pub model_file: String,
    #[serde(default = "default_labels_file")]
    pub labels_file: String,
    pub preprocess: PreprocessConfig,
    #[serde(default)]
    pub batching: BatchingConfig,
    #[serde(default)]
    pub runtime: RuntimeConfig,
}

/// torchvision's evaluation transform: resize shorter side, center crop, normalise.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessConfig {
    pub resize: u32,
    pub crop: u32,
    #[serde(default = "default_interpolation")]
    pub interpolation: String,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// Dynamic batching. Defaults measured on a 2-core AVX-512 CPU with WRN-50-2: batching
/// gains ~10 % there, so zero delay (batch size follows load) with batches up to 16.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BatchingConfig {
    #[serde(default = "default_max_batch")]
    pub max_batch_size: usize,
    /// How long an idle instance may wait for a fuller batch; 0 = take what is queued.
    #[serde(default)]
    pub max_queue_delay_ms: f64,
    /// Images that may wait in the queue before new requests get RESOURCE_EXHAUSTED.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// Model instances (sessions), each running one batch at a time.
    #[serde(default = "default_instances")]
    pub instances: usize,
}

impl Default for BatchingConfig {
    fn default() -> Self {
        Self {
            max_batch_size: default_max_batch(),
            max_queue_delay_ms: 0.0,
            queue_capacity: default_queue_capacity(),
            instances: default_instances(),
        }
    }
}

impl BatchingConfig {
    pub fn max_queue_delay(&self) -> Duration {
        Duration::from_secs_f64(self.max_queue_delay_ms / 1000.0)
    }
}

/// ONNX Runtime session settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Providers in order of preference: `tensorrt`, `cuda`, `cpu`.
    #[serde(default = "default_providers")]
    pub execution_providers: Vec<String>,
    /// Intra-op threads per instance; 0 lets ONNX Runtime choose (one per core).
    #[serde(default)]
    pub intra_op_threads: usize,
    #[serde(default = "default_inter_threads")]
    pub inter_op_threads: usize,
    #[serde(default = "default_opt_level")]
    pub graph_optimization_level: String,
    /// Whether idle intra-op threads spin. Spinning wins a little on an otherwise idle
    /// machine, but steals cores from decoding and gRPC when the server is loaded.
    #[serde(default = "default_spinning")]
    pub intra_op_spinning: bool,
    /// Batch sizes run before the model reports SERVING: `none`, `one`, `corners`, `all`.
    #[serde(default = "default_warmup")]
    pub warmup: String,
    #[serde(default)]
    pub cuda: CudaConfig,
    #[serde(default)]
    pub tensorrt: TensorRtConfig,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            execution_providers: default_providers(),
            intra_op_threads: 0,
            inter_op_threads: default_inter_threads(),
            graph_optimization_level: default_opt_level(),
            intra_op_spinning: default_spinning(),
            warmup: default_warmup(),
            cuda: CudaConfig::default(),
            tensorrt: TensorRtConfig::default(),
        }
    }
}

/// CUDA execution provider options.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CudaConfig {
    #[serde(default)]
    pub device_id: i32,
    /// cuDNN convolution algorithm search: `exhaustive`, `heuristic` or `default`.
    #[serde(default = "default_conv_search")]
    pub conv_algo_search: String,
    /// Memory arena limit in bytes; 0 = no limit.
    #[serde(default)]
    pub memory_limit_bytes: u64,
    /// CUDA graphs; only used when every batch shape is static (one batch size).
    #[serde(default)]
    pub cuda_graph: bool,
}

impl Default for CudaConfig {
    fn default() -> Self {
        Self {
            device_id: 0,
            conv_algo_search: default_conv_search(),
            memory_limit_bytes: 0,
            cuda_graph: false,
        }
    }
}

/// TensorRT execution provider options.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TensorRtConfig {
    #[serde(default)]
    pub device_id: i32,
    #[serde(default)]
    pub fp16: bool,
    #[serde(default)]
    pub int8: bool,
    /// INT8 calibration table; int8 is only enabled when this is given.
    #[serde(default)]
    pub int8_calibration_table: Option<String>,
    /// Engine and timing cache directory, so a restart does not rebuild engines.
    #[serde(default = "default_trt_cache")]
    pub cache_dir: String,
    #[serde(default = "default_trt_workspace")]
    pub workspace_bytes: u64,
    /// Optimisation profile's "opt" batch size; 0 = half the max batch size.
    #[serde(default)]
    pub opt_batch_size: usize,
}

impl Default for TensorRtConfig {
    fn default() -> Self {
        Self {
            device_id: 0,
            fp16: false,
            int8: false,
            int8_calibration_table: None,
            cache_dir: default_trt_cache(),
            workspace_bytes: default_trt_workspace(),
            opt_batch_size: 0,
        }
    }
}

fn default_version() -> String {
    "1".into()
}
fn default_model_file() -> String {
    "model.onnx".into()
}
fn default_labels_file() -> String {
    "labels.txt".into()
}
fn default_interpolation() -> String {
    "bilinear".into()
}
fn default_max_batch() -> usize {
    16
}
fn default_queue_capacity() -> usize {
    256
}
fn default_instances() -> usize {
    1
}
fn default_providers() -> Vec<String> {
    vec!["cpu".into()]
}
fn default_inter_threads() -> usize {
    1
}
fn default_opt_level() -> String {
    "all".into()
}
fn default_spinning() -> bool {
    true
}
fn default_warmup() -> String {
    "corners".into()
}
fn default_conv_search() -> String {
    "exhaustive".into()
}
fn default_trt_cache() -> String {
    "/tmp/wrn-trt-cache".into()
}
fn default_trt_workspace() -> u64 {
    4 << 30
}

/// Why a configuration was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("{path}: {msg}")]
    Invalid { path: String, msg: String },
}

/// Execution providers the server knows, by their config names.
pub const KNOWN_PROVIDERS: &[&str] = &["tensorrt", "cuda", "cpu"];

impl ModelConfig {
    /// Reads and validates `config.toml`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let cfg: ModelConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            source: Box::new(e),
        })?;
        cfg.validate().map_err(|msg| ConfigError::Invalid {
            path: origin.to_string(),
            msg,
        })?;
        Ok(cfg)
    }

    /// Checks every value a running server depends on.
    pub fn validate(&self) -> Result<(), String> {
        validate_model_name(&self.name)?;
        let p = &self.preprocess;
        if p.crop == 0 || p.resize == 0 {
            return Err("preprocess.resize and preprocess.crop must be positive".into());
        }
        if p.crop > 4096 || p.resize > 8192 {
            return Err("preprocess.resize/crop are implausibly large".into());
        }
        if p.interpolation != "bilinear" {
            return Err(format!(
                "preprocess.interpolation {:?} is not supported (only \"bilinear\")",
                p.interpolation
            ));
        }
        if p.std.iter().any(|s| !s.is_finite() || *s <= 0.0)
            || p.mean.iter().any(|m| !m.is_finite())
        {
            return Err("preprocess.std must be positive and mean finite".into());
        }
        let b = &self.batching;
        if b.max_batch_size == 0 || b.max_batch_size > 1024 {
            return Err("batching.max_batch_size must be in 1..=1024".into());
        }
        if b.queue_capacity == 0 {
            return Err("batching.queue_capacity must be at least 1".into());
        }
        if b.instances == 0 || b.instances > 64 {
            return Err("batching.instances must be in 1..=64".into());
        }
        if !b.max_queue_delay_ms.is_finite()
            || b.max_queue_delay_ms < 0.0
            || b.max_queue_delay_ms > 10_000.0
        {
            return Err("batching.max_queue_delay_ms must be in 0..=10000".into());
        }
        let r = &self.runtime;
        if r.execution_providers.is_empty() {
            return Err("runtime.execution_providers must name at least one provider".into());
        }
        for p in &r.execution_providers {
            if !KNOWN_PROVIDERS.contains(&p.as_str()) {
                return Err(format!(
                    "runtime.execution_providers: unknown provider {p:?} (known: tensorrt, cuda, cpu)"
                ));
            }
        }
        if !["disable", "basic", "extended", "all"].contains(&r.graph_optimization_level.as_str()) {
            return Err(
                "runtime.graph_optimization_level must be disable, basic, extended or all".into(),
            );
        }
        if !["none", "one", "corners", "all"].contains(&r.warmup.as_str()) {
            return Err("runtime.warmup must be none, one, corners or all".into());
        }
        if !["exhaustive", "heuristic", "default"].contains(&r.cuda.conv_algo_search.as_str()) {
            return Err(
                "runtime.cuda.conv_algo_search must be exhaustive, heuristic or default".into(),
            );
        }
        if r.tensorrt.opt_batch_size > b.max_batch_size {
            return Err("runtime.tensorrt.opt_batch_size exceeds batching.max_batch_size".into());
        }
        for f in [&self.model_file, &self.labels_file] {
            if f.is_empty() || f.contains("..") || f.starts_with('/') {
                return Err(format!(
                    "file name {f:?} must be a plain name inside the model folder"
                ));
            }
        }
        Ok(())
    }
}

/// A model name is one path segment of letters, digits, `_`, `-` and `.`, so it can never
/// escape the model repository.
pub fn validate_model_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "model name {name:?} is invalid: use 1-128 letters, digits, '_', '-' or '.'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        name = "m"
        [preprocess]
        resize = 232
        crop = 224
        mean = [0.485, 0.456, 0.406]
        std = [0.229, 0.224, 0.225]
    "#;

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let cfg = ModelConfig::parse(MINIMAL, "t").unwrap();
        assert_eq!(cfg.batching.max_batch_size, 16);
        assert_eq!(cfg.batching.max_queue_delay(), Duration::ZERO);
        assert_eq!(cfg.runtime.execution_providers, vec!["cpu"]);
        assert_eq!(cfg.model_file, "model.onnx");
        assert_eq!(cfg.runtime.warmup, "corners");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let text = format!("{MINIMAL}\n[batching]\nmax_batch = 4\n");
        let err = ModelConfig::parse(&text, "t").unwrap_err().to_string();
        assert!(err.contains("max_batch"), "{err}");
    }

    #[test]
    fn unknown_provider_is_rejected() {
        let text = format!("{MINIMAL}\n[runtime]\nexecution_providers = [\"rocm\"]\n");
        let err = ModelConfig::parse(&text, "t").unwrap_err().to_string();
        assert!(err.contains("unknown provider \"rocm\""), "{err}");
    }

    #[test]
    fn provider_options_parse() {
        let text = format!(
            "{MINIMAL}\n[runtime]\nexecution_providers = [\"tensorrt\", \"cuda\", \"cpu\"]\n\
             [runtime.tensorrt]\nfp16 = true\ncache_dir = \"/cache\"\nopt_batch_size = 8\n\
             [runtime.cuda]\nconv_algo_search = \"heuristic\"\nmemory_limit_bytes = 1024\n"
        );
        let cfg = ModelConfig::parse(&text, "t").unwrap();
        assert!(cfg.runtime.tensorrt.fp16);
        assert_eq!(cfg.runtime.tensorrt.cache_dir, "/cache");
        assert_eq!(cfg.runtime.cuda.memory_limit_bytes, 1024);
        assert_eq!(
            cfg.runtime.execution_providers,
            vec!["tensorrt", "cuda", "cpu"]
        );
    }

    #[test]
    fn bad_values_are_rejected_with_the_field_name() {
        for (extra, field) in [
            ("[batching]\nmax_batch_size = 0\n", "max_batch_size"),
            ("[batching]\ninstances = 0\n", "instances"),
            (
                "[batching]\nmax_queue_delay_ms = -1.0\n",
                "max_queue_delay_ms",
            ),
            ("[runtime]\nwarmup = \"sometimes\"\n", "warmup"),
        ] {
            let err = ModelConfig::parse(&format!("{MINIMAL}\n{extra}"), "t")
                .unwrap_err()
                .to_string();
            assert!(err.contains(field), "{extra}: {err}");
        }
    }

    #[test]
    fn model_names_cannot_escape_the_repository() {
        for bad in ["", "..", ".", "a/b", "../etc", "a\\b", "a b", "x\0"] {
            assert!(validate_model_name(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["wide_resnet50_2", "wrn-16-4", "m.v2"] {
            assert!(validate_model_name(good).is_ok(), "{good:?} rejected");
        }
    }
}
