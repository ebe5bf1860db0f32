//! What `wrn train` reads from the artifacts (`export_meta.json`, written by
//! models/training_artifacts.py) and what it writes for `wrn serve` (`config.toml` in the
//! server's exact schema, `labels.txt`), plus the run state saved beside each checkpoint.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::config::{
    BatchingConfig, ModelConfig, PreprocessConfig, RuntimeConfig, validate_model_name,
};

/// `export_meta.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct ExportMeta {
    pub architecture: String,
    #[serde(default)]
    pub base_weights: String,
    #[serde(default)]
    pub pretrained: bool,
    pub num_classes: usize,
    pub preprocess: PreprocessConfig,
    #[serde(default = "default_max_batch")]
    pub max_batch_size: usize,
    /// Name of the logits output (an extra output of the training and eval graphs).
    pub logits: String,
    #[serde(default)]
    pub optimizer: String,
    #[serde(default)]
    pub train_layers: String,
    /// Training-graph outputs holding the updated BatchNorm running statistics, each with the
    /// checkpoint entry it replaces after every step.
    #[serde(default)]
    pub bn_stat_updates: Vec<StatUpdate>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StatUpdate {
    pub output: String,
    pub parameter: String,
}

fn default_max_batch() -> usize {
    16
}

impl ExportMeta {
    pub fn load(artifacts: &Path) -> anyhow::Result<Self> {
        let path = artifacts.join("export_meta.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {}; make the artifacts with `python models/training_artifacts.py --arch ... --num-classes N --out {}`",
                path.display(),
                artifacts.display()
            )
        })?;
        let meta: ExportMeta = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid", path.display()))?;
        for f in [
            "training_model.onnx",
            "eval_model.onnx",
            "optimizer_model.onnx",
            "checkpoint",
        ] {
            if !artifacts.join(f).is_file() {
                anyhow::bail!(
                    "{} is missing from the artifacts folder {}",
                    f,
                    artifacts.display()
                );
            }
        }
        Ok(meta)
    }
}

/// How the served model came to be, for the config's `weights` field.
#[derive(Debug, Clone)]
pub struct Provenance {
    pub epochs: usize,
    pub val_accuracy: f64,
    pub train_images: usize,
}

/// The serving config for the exported model: the artifacts' preprocessing, the server's
/// defaults elsewhere. The model name is the output folder's name (the server requires it).
pub fn model_config(name: &str, meta: &ExportMeta, p: &Provenance) -> anyhow::Result<ModelConfig> {
    validate_model_name(name).map_err(|e| anyhow::anyhow!("output folder name: {e}"))?;
    let cfg = ModelConfig {
        name: name.to_string(),
        version: "1".into(),
        architecture: meta.architecture.clone(),
        weights: format!(
            "fine-tuned by wrn train from {} ({} epochs on {} images, held-out accuracy {:.3})",
            if meta.base_weights.is_empty() {
                "unknown weights"
            } else {
                &meta.base_weights
            },
            p.epochs,
            p.train_images,
            p.val_accuracy
        ),
        // trained weights: the classes mean something, whatever the starting point was
        pretrained: true,
        model_file: "model.onnx".into(),
        labels_file: "labels.txt".into(),
        preprocess: meta.preprocess.clone(),
        batching: BatchingConfig {
            max_batch_size: meta.max_batch_size,
            ..BatchingConfig::default()
        },
        runtime: RuntimeConfig::default(),
    };
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("generated config is invalid: {e}"))?;
    Ok(cfg)
}

/// Writes config.toml and labels.txt into `dir` (the model graph is written by the session).
pub fn write_config_and_labels(
    dir: &Path,
    cfg: &ModelConfig,
    classes: &[String],
) -> anyhow::Result<()> {
    let text = toml::to_string(cfg).context("serialising config.toml")?;
    // round trip through the server's own parser: what it cannot load is never written
    ModelConfig::parse(&text, "generated config.toml").map_err(|e| anyhow::anyhow!("{e}"))?;
    std::fs::write(dir.join("config.toml"), text).context("writing config.toml")?;
    let labels: String = classes.iter().map(|c| format!("{c}\n")).collect();
    std::fs::write(dir.join("labels.txt"), labels).context("writing labels.txt")?;
    Ok(())
}

/// One finished epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub lr: f32,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    pub seconds: f64,
}

/// `state.json` beside the checkpoint: enough to resume where the run stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub epochs_done: usize,
    pub global_step: usize,
    pub seed: u64,
    pub classes: Vec<String>,
    pub history: Vec<EpochRecord>,
}

impl RunState {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not valid", path.display()))
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(self)?)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const META: &str = r#"{
        "format": 1, "name": "wrn_10_1_finetuned", "architecture": "wrn-10-1",
        "base_weights": "random-init seed=0", "pretrained": false, "num_classes": 3,
        "labels": ["a", "b", "c"], "train_layers": "all",
        "preprocess": {"resize": 32, "crop": 32, "interpolation": "bilinear",
                       "mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.2435, 0.2616]},
        "max_batch_size": 64, "input": "input", "labels_input": "labels", "logits": "logits",
        "optimizer": "adamw", "loss": "onnx::loss::2",
        "bn_stat_updates": [{"output": "/bn/BatchNormalization_output_1", "parameter": "bn.running_mean"}]
    }"#;

    #[test]
    fn meta_parses_and_the_config_is_what_the_server_loads() {
        let meta: ExportMeta = serde_json::from_str(META).unwrap();
        assert_eq!(meta.bn_stat_updates[0].parameter, "bn.running_mean");
        let p = Provenance {
            epochs: 3,
            val_accuracy: 0.9,
            train_images: 100,
        };
        let cfg = model_config("digits", &meta, &p).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let classes: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        write_config_and_labels(dir.path(), &cfg, &classes).unwrap();
        let back = ModelConfig::load(&dir.path().join("config.toml")).unwrap();
        assert_eq!(back, cfg);
        assert_eq!(back.preprocess.crop, 32);
        assert_eq!(back.batching.max_batch_size, 64);
        assert!(back.weights.contains("random-init seed=0") && back.weights.contains("0.900"));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("labels.txt")).unwrap(),
            "a\nb\nc\n"
        );
    }

    #[test]
    fn the_output_folder_name_must_be_a_model_name() {
        let meta: ExportMeta = serde_json::from_str(META).unwrap();
        let p = Provenance {
            epochs: 1,
            val_accuracy: 0.5,
            train_images: 1,
        };
        assert!(model_config("bad name", &meta, &p).is_err());
    }

    #[test]
    fn run_state_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let s = RunState {
            epochs_done: 2,
            global_step: 40,
            seed: 1,
            classes: vec!["x".into(), "y".into()],
            history: vec![EpochRecord {
                epoch: 1,
                lr: 0.1,
                train_loss: 1.0,
                train_accuracy: 0.5,
                val_loss: 0.9,
                val_accuracy: 0.6,
                seconds: 1.5,
            }],
        };
        let path = dir.path().join("state.json");
        s.save(&path).unwrap();
        assert_eq!(RunState::load(&path).unwrap(), s);
    }
}
