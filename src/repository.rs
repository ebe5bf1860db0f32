//! The model repository: every model folder under `--models-dir`, loaded into instances
//! (choosing an execution provider), warmed up, and handed to its batcher.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use anyhow::{Context, bail};
use tracing::{info, warn};

use crate::{
    batcher::{self, Handle},
    cli::ServeArgs,
    config::{ModelConfig, validate_model_name},
    error::Error,
    metrics::ModelMetrics,
    model::{GraphInfo, Instance},
    preprocess::{DecodeLimits, Preprocessor},
    runtime::{Runtime, choose_provider},
};

/// A model that is loaded and serving.
#[derive(Debug)]
pub struct Loaded {
    pub info: GraphInfo,
    pub provider: String,
    pub skipped_providers: Vec<(String, String)>,
    pub batcher: Handle,
}

/// One model of the repository, loading or loaded.
#[derive(Debug)]
pub struct ModelEntry {
    pub config: ModelConfig,
    pub dir: PathBuf,
    pub labels: Vec<String>,
    pub preprocessor: Arc<Preprocessor>,
    pub metrics: ModelMetrics,
    loaded: RwLock<Option<Arc<Loaded>>>,
}

impl ModelEntry {
    pub fn loaded(&self) -> Option<Arc<Loaded>> {
        self.loaded
            .read()
            .expect("model state lock poisoned")
            .clone()
    }
}

/// Every served model, by name.
#[derive(Debug)]
pub struct Repository {
    pub models: BTreeMap<String, Arc<ModelEntry>>,
    pub default_model: String,
}

impl Repository {
    /// Finds a model; an empty name means the default model.
    pub fn get(&self, name: &str) -> Result<&Arc<ModelEntry>, Error> {
        let name = if name.is_empty() {
            self.default_model.as_str()
        } else {
            name
        };
        validate_model_name(name).map_err(Error::InvalidArgument)?;
        self.models
            .get(name)
            .ok_or_else(|| Error::ModelNotFound(name.to_string()))
    }
}

/// Applies the server's command-line overrides to one model config.
pub fn apply_overrides(cfg: &mut ModelConfig, args: &ServeArgs) -> anyhow::Result<()> {
    if !args.execution_providers.is_empty() {
        cfg.runtime.execution_providers = args.execution_providers.clone();
    }
    if let Some(n) = args.intra_op_threads {
        cfg.runtime.intra_op_threads = n;
    }
    if let Some(n) = args.inter_op_threads {
        cfg.runtime.inter_op_threads = n;
    }
    if let Some(s) = args.intra_op_spinning {
        cfg.runtime.intra_op_spinning = s;
    }
    if let Some(l) = &args.graph_optimization_level {
        cfg.runtime.graph_optimization_level = l.clone();
    }
    if let Some(n) = args.instances {
        cfg.batching.instances = n;
    }
    if let Some(n) = args.max_batch_size {
        cfg.batching.max_batch_size = n;
    }
    if let Some(d) = args.max_queue_delay_ms {
        cfg.batching.max_queue_delay_ms = d;
    }
    if let Some(n) = args.queue_capacity {
        cfg.batching.queue_capacity = n;
    }
    if let Some(w) = &args.warmup {
        cfg.runtime.warmup = w.clone();
    }
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("model {}: {e}", cfg.name))
}

/// Reads every model folder's config and labels (fast; no sessions yet).
pub fn discover(args: &ServeArgs) -> anyhow::Result<Repository> {
    let dir = &args.models_dir;
    let entries = std::fs::read_dir(dir).with_context(|| {
        format!(
            "cannot read the model repository {}; export models with `python models/export.py --all-defaults` or pass --models-dir",
            dir.display()
        )
    })?;
    let limits = DecodeLimits {
        max_pixels: args.limits.max_image_pixels,
        ..DecodeLimits::default()
    };
    let mut models = BTreeMap::new();
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("config.toml").is_file())
        .collect();
    dirs.sort();
    for path in dirs {
        let mut cfg = ModelConfig::load(&path.join("config.toml"))?;
        let folder = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if cfg.name != folder {
            bail!(
                "{}: config name {:?} differs from its folder name {folder:?}",
                path.display(),
                cfg.name
            );
        }
        if !args.models.is_empty() && !args.models.contains(&cfg.name) {
            continue;
        }
        apply_overrides(&mut cfg, args)?;
        let labels = read_labels(&path.join(&cfg.labels_file))?;
        let metrics = ModelMetrics::new(&cfg.name, &cfg.version);
        let preprocessor = Arc::new(Preprocessor::new(cfg.preprocess.clone(), limits));
        models.insert(
            cfg.name.clone(),
            Arc::new(ModelEntry {
                config: cfg,
                dir: path,
                labels,
                preprocessor,
                metrics,
                loaded: RwLock::new(None),
            }),
        );
    }
    for wanted in &args.models {
        if !models.contains_key(wanted) {
            bail!(
                "model {wanted:?} (from --models) is not in {}",
                dir.display()
            );
        }
    }
    if models.is_empty() {
        bail!(
            "no models in {} (each model is a folder with config.toml); export one with `python models/export.py --all-defaults`",
            dir.display()
        );
    }
    let default_model = if models.contains_key(&args.default_model) {
        args.default_model.clone()
    } else if models.len() == 1 {
        models.keys().next().expect("one model").clone()
    } else {
        bail!(
            "default model {:?} is not in {} (models: {}); pass --default-model",
            args.default_model,
            dir.display(),
            models.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    };
    Ok(Repository {
        models,
        default_model,
    })
}

fn read_labels(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read labels {}", path.display()))?;
    let labels: Vec<String> = text.lines().map(|l| l.trim_end().to_string()).collect();
    if labels.is_empty() {
        bail!("{} has no labels", path.display());
    }
    Ok(labels)
}

/// The batch sizes run at load so no client pays for first-run costs (kernel selection,
/// TensorRT engine builds): `one` = 1; `corners` = 1 and the max (plus TensorRT's opt);
/// `all` = every size the batcher can form.
pub fn warmup_sizes(mode: &str, max_batch: usize, trt_opt: Option<usize>) -> Vec<usize> {
    let mut sizes = match mode {
        "none" => vec![],
        "one" => vec![1],
        "all" => (1..=max_batch).collect(),
        _ => {
            let mut v = vec![1, max_batch];
            if let Some(o) = trt_opt {
                v.push(o);
            }
            v
        }
    };
    sizes.sort_unstable();
    sizes.dedup();
    sizes
}

/// Opens every instance of one model (blocking), warms it up and starts its batcher.
/// Must be called inside a tokio runtime (the batcher task is spawned on it).
pub fn load_model(
    rt: &Runtime,
    entry: &ModelEntry,
    require_gpu: bool,
) -> anyhow::Result<Arc<Loaded>> {
    let cfg = &entry.config;
    let model_path = entry.dir.join(&cfg.model_file);
    if !model_path.is_file() {
        bail!(
            "model {}: {} does not exist",
            cfg.name,
            model_path.display()
        );
    }
    let labels = entry.labels.len();
    let choice = choose_provider(&cfg.runtime.execution_providers, require_gpu, |p| {
        Instance::open(rt, cfg, &model_path, p, labels)
    })
    .map_err(|e| anyhow::anyhow!("model {}: {e}", cfg.name))?;
    for (p, why) in &choice.skipped {
        warn!(model = %cfg.name, provider = %p, reason = %why, "execution provider unavailable, falling back");
    }
    let provider = choice.provider.clone();
    let mut instances = vec![choice.value];
    for _ in 1..cfg.batching.instances {
        instances.push(
            Instance::open(rt, cfg, &model_path, &provider, labels)
                .map_err(|e| anyhow::anyhow!("model {}: instance on {provider}: {e}", cfg.name))?,
        );
    }
    let info = instances[0].info.clone();
    let slot = entry.preprocessor.slot_len();
    let trt_opt = (provider == "tensorrt").then(|| {
        let o = cfg.runtime.tensorrt.opt_batch_size;
        if o > 0 {
            o
        } else {
            cfg.batching.max_batch_size.div_ceil(2)
        }
    });
    let sizes = warmup_sizes(&cfg.runtime.warmup, cfg.batching.max_batch_size, trt_opt);
    for inst in &mut instances {
        for &b in &sizes {
            let started = std::time::Instant::now();
            inst.run(&vec![0f32; b * slot], b)
                .map_err(|e| anyhow::anyhow!("model {}: warm-up batch {b}: {e}", cfg.name))?;
            info!(model = %cfg.name, batch = b, ms = started.elapsed().as_millis() as u64, "warm-up");
        }
    }
    info!(
        model = %cfg.name,
        version = %cfg.version,
        provider = %provider,
        instances = instances.len(),
        weights = %cfg.weights,
        pretrained = cfg.pretrained,
        input = %info.input_name,
        output = %info.output_name,
        classes = info.num_classes,
        "model ready"
    );
    if !cfg.pretrained {
        warn!(model = %cfg.name, weights = %cfg.weights, "model has seeded random weights: its classes are not meaningful");
    }
    let settings = batcher::Settings {
        model: cfg.name.clone(),
        max_batch_size: cfg.batching.max_batch_size,
        max_queue_delay: cfg.batching.max_queue_delay(),
        queue_capacity: cfg.batching.queue_capacity,
        slot_len: slot,
        num_classes: info.num_classes,
    };
    let handle = batcher::spawn(settings, instances, entry.metrics.clone());
    let loaded = Arc::new(Loaded {
        info,
        provider,
        skipped_providers: choice.skipped,
        batcher: handle,
    });
    *entry.loaded.write().expect("model state lock poisoned") = Some(loaded.clone());
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_sizes_per_mode() {
        assert!(warmup_sizes("none", 16, None).is_empty());
        assert_eq!(warmup_sizes("one", 16, None), vec![1]);
        assert_eq!(warmup_sizes("corners", 16, None), vec![1, 16]);
        assert_eq!(warmup_sizes("corners", 16, Some(8)), vec![1, 8, 16]);
        assert_eq!(warmup_sizes("corners", 1, None), vec![1]);
        assert_eq!(warmup_sizes("all", 4, None), vec![1, 2, 3, 4]);
    }
}
