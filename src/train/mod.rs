//! `wrn train`: fine-tuning through ONNX Runtime's training API.

use crate::cli::TrainArgs;

/// Entry point of `wrn train`.
pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let rt = crate::runtime::load(args.ort_lib.as_deref())?;
    if !crate::runtime::has_training_api() {
        anyhow::bail!(
            "the ONNX Runtime at {} (version {}) has no training API; build a training-capable one with deploy/ort-training/build.sh and pass it with --ort-lib",
            rt.library.display(),
            rt.version
        );
    }
    anyhow::bail!("training loop is not implemented yet")
}
