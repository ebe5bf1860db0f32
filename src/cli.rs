//! Command-line interface: one Args struct per subcommand. Every server flag also reads a
//! `WRN_*` environment variable (the library path reads `ORT_DYLIB_PATH`).

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "wrn",
    version,
    about = "Wide ResNet inference server on ONNX Runtime"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format.
    #[arg(long, global = true, env = "WRN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log level filter (overridden by RUST_LOG when set), e.g. `info` or `wrn=debug`.
    #[arg(
        long,
        global = true,
        env = "WRN_LOG_LEVEL",
        default_value = "info,ort=warn"
    )]
    pub log_level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve every model of a model repository over gRPC.
    Serve(Box<ServeArgs>),
    /// Classify image files through a running server.
    Classify(ClassifyArgs),
    /// Closed-loop gRPC load generator.
    Bench(crate::bench::BenchArgs),
    /// Fine-tune a model through ONNX Runtime's training API.
    Train(TrainArgs),
}

/// Server settings.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Model repository: one folder per model with config.toml, model.onnx, labels.txt.
    #[arg(long, env = "WRN_MODELS_DIR", default_value = "models/repository")]
    pub models_dir: PathBuf,
    /// Serve only these models (comma separated); default: every model in the repository.
    #[arg(long, env = "WRN_MODELS", value_delimiter = ',')]
    pub models: Vec<String>,
    /// The model used when a request names none.
    #[arg(long, env = "WRN_DEFAULT_MODEL", default_value = "wide_resnet50_2")]
    pub default_model: String,
    /// gRPC listen address.
    #[arg(long, env = "WRN_ADDR", default_value = "0.0.0.0:50051")]
    pub addr: SocketAddr,
    /// Prometheus metrics listen address (path /metrics).
    #[arg(long, env = "WRN_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,
    /// Turn the metrics endpoint and recording off.
    #[arg(long, env = "WRN_NO_METRICS")]
    pub no_metrics: bool,
    /// ONNX Runtime shared library (default: .ort/cpu/libonnxruntime.so, then
    /// /opt/onnxruntime/lib/libonnxruntime.so).
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_lib: Option<PathBuf>,
    /// Override every model's execution providers, in order of preference
    /// (tensorrt, cuda, cpu).
    #[arg(long, env = "WRN_EXECUTION_PROVIDERS", value_delimiter = ',')]
    pub execution_providers: Vec<String>,
    /// Fail start-up instead of falling back to the CPU when no GPU provider works.
    #[arg(long, env = "WRN_REQUIRE_GPU")]
    pub require_gpu: bool,
    /// Override every model's intra-op threads per instance.
    #[arg(long, env = "WRN_INTRA_OP_THREADS")]
    pub intra_op_threads: Option<usize>,
    /// Override every model's inter-op threads per instance.
    #[arg(long, env = "WRN_INTER_OP_THREADS")]
    pub inter_op_threads: Option<usize>,
    /// Override every model's intra-op spinning (true or false).
    #[arg(long, env = "WRN_INTRA_OP_SPINNING")]
    pub intra_op_spinning: Option<bool>,
    /// Override every model's graph optimisation level (disable, basic, extended, all).
    #[arg(long, env = "WRN_GRAPH_OPTIMIZATION_LEVEL")]
    pub graph_optimization_level: Option<String>,
    /// Override every model's instance count.
    #[arg(long, env = "WRN_INSTANCES")]
    pub instances: Option<usize>,
    /// Override every model's max batch size.
    #[arg(long, env = "WRN_MAX_BATCH_SIZE")]
    pub max_batch_size: Option<usize>,
    /// Override every model's max queue delay in milliseconds.
    #[arg(long, env = "WRN_MAX_QUEUE_DELAY_MS")]
    pub max_queue_delay_ms: Option<f64>,
    /// Override every model's queue capacity (images).
    #[arg(long, env = "WRN_QUEUE_CAPACITY")]
    pub queue_capacity: Option<usize>,
    /// Override every model's warm-up (none, one, corners, all).
    #[arg(long, env = "WRN_WARMUP")]
    pub warmup: Option<String>,
    /// Seconds in-flight work may take to finish after SIGTERM before the process exits.
    #[arg(long, env = "WRN_DRAIN_TIMEOUT_SECS", default_value_t = 30)]
    pub drain_timeout_secs: u64,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub security: SecurityArgs,
}

/// Limits on what one request may ask for.
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Largest gRPC request message in bytes.
    #[arg(long, env = "WRN_MAX_MESSAGE_BYTES", default_value_t = 32 << 20)]
    pub max_message_bytes: usize,
    /// Most images in one Classify request.
    #[arg(long, env = "WRN_MAX_IMAGES_PER_REQUEST", default_value_t = 64)]
    pub max_images_per_request: usize,
    /// Largest encoded image in bytes.
    #[arg(long, env = "WRN_MAX_IMAGE_BYTES", default_value_t = 20 << 20)]
    pub max_image_bytes: usize,
    /// Largest decoded image in pixels (width x height), checked from the header before
    /// decoding: the decompression-bomb guard.
    #[arg(long, env = "WRN_MAX_IMAGE_PIXELS", default_value_t = 40_000_000)]
    pub max_image_pixels: u64,
    /// Longest time one request may take when the client sets no shorter deadline.
    #[arg(long, env = "WRN_REQUEST_TIMEOUT_SECS", default_value_t = 60.0)]
    pub request_timeout_secs: f64,
}

/// Transport security and access control.
#[derive(Debug, Clone, Args, Default)]
pub struct SecurityArgs {
    /// PEM certificate chain: serve gRPC over TLS.
    #[arg(long, env = "WRN_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "WRN_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: require and verify client certificates (mTLS).
    #[arg(long, env = "WRN_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// File holding accepted bearer tokens, one per line.
    #[arg(long, env = "WRN_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// Accepted bearer tokens, comma separated (prefer the file: env is visible in /proc).
    #[arg(
        long,
        env = "WRN_AUTH_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub auth_tokens: Vec<String>,
    /// Also require the token for health checks.
    #[arg(long, env = "WRN_AUTH_HEALTH")]
    pub auth_health: bool,
    /// Also require the token for reflection.
    #[arg(long, env = "WRN_AUTH_REFLECTION")]
    pub auth_reflection: bool,
}

/// `wrn classify`.
#[derive(Debug, Args)]
pub struct ClassifyArgs {
    /// Server address, HOST:PORT or a URL.
    #[arg(long, env = "WRN_SERVER", default_value = "127.0.0.1:50051")]
    pub addr: String,
    /// Model name; empty means the server's default.
    #[arg(long, default_value = "")]
    pub model: String,
    /// Classes per image.
    #[arg(long, default_value_t = 5)]
    pub top_k: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Send all files in one request (default) or one request per file.
    #[arg(long)]
    pub one_per_request: bool,
    /// Bearer token, when the server requires one.
    #[arg(long, env = "WRN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Request deadline in seconds.
    #[arg(long, default_value_t = 60.0)]
    pub timeout_secs: f64,
    /// Image files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// `wrn train`: fine-tune from ONNX Runtime training artifacts
/// (`python models/training_artifacts.py ...`) on an image folder, then write a model folder
/// that `wrn serve` loads as it is.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Training artifacts folder: training/eval/optimizer graphs, checkpoint, export_meta.json.
    #[arg(long)]
    pub artifacts: PathBuf,
    /// Image folder: one subfolder per class (the folder names become the labels).
    #[arg(long, required_unless_present = "selftest")]
    pub data: Option<PathBuf>,
    /// Separate validation folder with the same class subfolders (instead of --val-fraction).
    #[arg(long)]
    pub val_dir: Option<PathBuf>,
    /// Share of each class held out for evaluation when there is no --val-dir.
    #[arg(long, default_value_t = 0.2)]
    pub val_fraction: f64,
    /// Output model folder (model.onnx, config.toml, labels.txt); its name is the model name,
    /// so put it in the model repository: `wrn serve --models-dir <its parent>`.
    #[arg(long, required_unless_present = "selftest")]
    pub out: Option<PathBuf>,
    /// Passes over the training images.
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// Images per optimizer step.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Peak learning rate (AdamW artifacts: ~1e-3; plain SGD: ~0.05).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f32,
    /// Learning-rate schedule: cosine (per step, to 0), step (x --lr-gamma every
    /// --lr-step-epochs epochs) or constant.
    #[arg(long, default_value = "cosine", value_parser = ["cosine", "step", "constant"])]
    pub schedule: String,
    /// Epochs between decays of the step schedule (default: a third of --epochs).
    #[arg(long)]
    pub lr_step_epochs: Option<usize>,
    /// Factor of each step-schedule decay (the WRN paper uses 0.2).
    #[arg(long, default_value_t = 0.2)]
    pub lr_gamma: f32,
    /// Seed of the split, the batch order and the augmentation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Smallest crop area of the random resized crop, as a share of the image.
    #[arg(long, default_value_t = 0.25)]
    pub min_crop_scale: f64,
    /// Turn off the random horizontal flip (for data where mirroring changes the class,
    /// such as digits or text).
    #[arg(long)]
    pub no_hflip: bool,
    /// A progress line every this many steps.
    #[arg(long, default_value_t = 10)]
    pub log_every: usize,
    /// Where the checkpoint (parameters + optimizer state) and the run state are saved after
    /// every epoch (default: <out>.ckpt next to the output folder).
    #[arg(long)]
    pub checkpoint_dir: Option<PathBuf>,
    /// Continue the run saved in --checkpoint-dir from its last finished epoch.
    #[arg(long)]
    pub resume: bool,
    /// Intra-op threads of the training session (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Training-capable ONNX Runtime library (deploy/ort-training/build.sh).
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_lib: Option<PathBuf>,
    /// Check the training runtime on deploy/ort-training/make_tiny_artifacts.py artifacts:
    /// a few optimizer steps on a toy problem must halve the loss.
    #[arg(long, hide = true)]
    pub selftest: bool,
}
