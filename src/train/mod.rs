//! `wrn train`: fine-tuning through ONNX Runtime's training API.
//!
//! artifacts (models/training_artifacts.py) + image folder -> checks (classes, every image
//! decodes) -> epochs of augmented batches: train step, BatchNorm statistics copied into the
//! checkpoint, optimizer step, learning-rate schedule -> held-out evaluation with the server's
//! preprocessing -> checkpoint + state after each epoch -> `model.onnx` (ORT's inference
//! export), `config.toml`, `labels.txt` in `--out`, which `wrn serve` loads as they are.

pub mod augment;
pub mod data;
pub mod output;
mod selftest;
#[allow(unsafe_code)]
pub mod session;

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context, bail};

use crate::{cli::TrainArgs, preprocess::DecodeLimits, runtime::Runtime};

use self::{
    augment::{Augment, Batcher},
    data::Dataset,
    output::{EpochRecord, ExportMeta, Provenance, RunState},
    session::TrainSession,
};

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
    if args.selftest {
        return selftest::run(&rt, &args.artifacts, args.threads);
    }
    let plan = Plan::prepare(&args)?;
    plan.train(&rt, &args)
}

/// The learning rate at `step` of `total` steps (epoch `epoch`).
pub fn learning_rate(args: &TrainArgs, step: usize, total: usize, epoch: usize) -> f32 {
    match args.schedule.as_str() {
        "cosine" => {
            let t = step as f64 / total.max(1) as f64;
            (f64::from(args.lr) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())) as f32
        }
        "step" => {
            let every = args
                .lr_step_epochs
                .unwrap_or((args.epochs / 3).max(1))
                .max(1);
            args.lr * args.lr_gamma.powi((epoch / every) as i32)
        }
        _ => args.lr,
    }
}

/// Everything checked before the first step.
struct Plan {
    meta: ExportMeta,
    train: Dataset,
    val: Dataset,
    out: PathBuf,
    name: String,
    ckpt_dir: PathBuf,
}

impl Plan {
    fn prepare(args: &TrainArgs) -> anyhow::Result<Self> {
        let meta = ExportMeta::load(&args.artifacts)?;
        let out = args.out.clone().expect("clap requires --out");
        let data_dir = args.data.clone().expect("clap requires --data");
        let name = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| anyhow::anyhow!("--out {} has no folder name", out.display()))?;
        crate::config::validate_model_name(&name)
            .map_err(|e| anyhow::anyhow!("--out folder name becomes the model name: {e}"))?;
        if args.batch_size < 2 {
            bail!("--batch-size must be at least 2 (BatchNorm needs batch statistics)");
        }
        if args.epochs == 0 {
            bail!("--epochs must be at least 1");
        }
        if !(0.0..1.0).contains(&args.val_fraction)
            || (args.val_dir.is_none() && args.val_fraction == 0.0)
        {
            bail!("--val-fraction must be in (0, 1) (or give --val-dir)");
        }
        if !(args.min_crop_scale > 0.0 && args.min_crop_scale <= 1.0) {
            bail!("--min-crop-scale must be in (0, 1]");
        }
        let limits = DecodeLimits::default();
        let all = data::load(&data_dir, &limits)?;
        let (train, val) = match &args.val_dir {
            Some(v) => {
                let val = data::load(v, &limits)?;
                data::check_same_classes(&all, &val, v)?;
                (all, val)
            }
            None => data::split(all, args.val_fraction, args.seed)?,
        };
        if train.classes.len() != meta.num_classes {
            bail!(
                "the artifacts were made for {} classes but {} has {} class folders ({}); regenerate them with --num-classes {}",
                meta.num_classes,
                data_dir.display(),
                train.classes.len(),
                train.classes.join(", "),
                train.classes.len()
            );
        }
        if train.samples.len() < args.batch_size {
            bail!(
                "{} training images are fewer than one batch (--batch-size {})",
                train.samples.len(),
                args.batch_size
            );
        }
        let ckpt_dir = args.checkpoint_dir.clone().unwrap_or_else(|| {
            let mut p = out.clone().into_os_string();
            p.push(".ckpt");
            PathBuf::from(p)
        });
        Ok(Self {
            meta,
            train,
            val,
            out,
            name,
            ckpt_dir,
        })
    }

    fn train(self, rt: &Runtime, args: &TrainArgs) -> anyhow::Result<()> {
        let Plan {
            meta,
            train,
            val,
            out,
            name,
            ckpt_dir,
        } = self;
        let state_path = ckpt_dir.join("state.json");
        let ckpt_path = ckpt_dir.join("checkpoint");
        let mut state = if args.resume {
            let s = RunState::load(&state_path)
                .with_context(|| format!("--resume: no saved run in {}", ckpt_dir.display()))?;
            if s.classes != train.classes {
                bail!(
                    "--resume: the saved run has classes {:?}, the data folder {:?}",
                    s.classes,
                    train.classes
                );
            }
            s
        } else {
            RunState {
                epochs_done: 0,
                global_step: 0,
                seed: args.seed,
                classes: train.classes.clone(),
                history: vec![],
            }
        };
        let session = TrainSession::open(
            rt,
            &args.artifacts,
            args.resume.then_some(ckpt_path.as_path()),
            args.threads,
        )?;
        let stat_slots = stat_slots(&meta, session.train_outputs())?;
        eprintln!(
            "wrn train: {} ({}, {} layers trainable, {} trainable weights, optimizer {}) on {} training / {} held-out images of {} classes",
            meta.architecture,
            meta.base_weights,
            meta.train_layers,
            session.trainable_elements()?,
            if meta.optimizer.is_empty() {
                "?"
            } else {
                &meta.optimizer
            },
            train.samples.len(),
            val.samples.len(),
            train.classes.len()
        );
        if args.resume {
            eprintln!(
                "resuming after epoch {} (step {})",
                state.epochs_done, state.global_step
            );
        }
        let crop = meta.preprocess.crop as usize;
        let batcher = Batcher::new(
            &meta.preprocess,
            Augment {
                size: meta.preprocess.crop,
                scale: (args.min_crop_scale, 1.0),
                ratio: (3.0 / 4.0, 4.0 / 3.0),
                hflip: !args.no_hflip,
            },
            state.seed,
        );
        let steps_per_epoch = train.samples.len() / args.batch_size; // drop the ragged last batch
        let total_steps = steps_per_epoch * args.epochs;
        std::fs::create_dir_all(&ckpt_dir)
            .with_context(|| format!("cannot create {}", ckpt_dir.display()))?;

        for epoch in state.epochs_done..args.epochs {
            let started = Instant::now();
            let order = data::epoch_order(train.samples.len(), state.seed, epoch);
            let (mut loss_sum, mut correct, mut seen) = (0f64, 0usize, 0usize);
            let mut lr = args.lr;
            let mut window = Instant::now();
            let mut window_images = 0usize;
            for step in 0..steps_per_epoch {
                lr = learning_rate(args, state.global_step, total_steps, epoch);
                session.set_lr(lr)?;
                let idx = &order[step * args.batch_size..(step + 1) * args.batch_size];
                let (x, y) =
                    batcher.train_batch(&train.samples, idx, epoch, step * args.batch_size);
                let out = session.train_step(
                    &[idx.len(), 3, crop, crop],
                    x,
                    y.clone(),
                    Some(&meta.logits),
                )?;
                if !out.loss.is_finite() {
                    bail!(
                        "the loss became {} at epoch {} step {}; lower --lr",
                        out.loss,
                        epoch + 1,
                        step + 1
                    );
                }
                for (slot, param) in &stat_slots {
                    session.update_parameter(param, &out.outputs[*slot])?;
                }
                session.optimizer_step()?;
                state.global_step += 1;
                loss_sum += f64::from(out.loss) * idx.len() as f64;
                correct += count_correct(&out.logits, &y);
                seen += idx.len();
                window_images += idx.len();
                if args.log_every > 0
                    && ((step + 1) % args.log_every == 0 || step + 1 == steps_per_epoch)
                {
                    let ips = window_images as f64 / window.elapsed().as_secs_f64().max(1e-9);
                    eprintln!(
                        "epoch {}/{} step {}/{} loss {:.4} acc {:.3} lr {:.3e} {:.1} img/s",
                        epoch + 1,
                        args.epochs,
                        step + 1,
                        steps_per_epoch,
                        loss_sum / seen as f64,
                        correct as f64 / seen as f64,
                        lr,
                        ips
                    );
                    window = Instant::now();
                    window_images = 0;
                }
            }
            let (val_loss, val_acc) = evaluate(
                &session,
                &batcher,
                &val,
                args.batch_size,
                crop,
                &meta.logits,
            )?;
            let rec = EpochRecord {
                epoch: epoch + 1,
                lr,
                train_loss: loss_sum / seen.max(1) as f64,
                train_accuracy: correct as f64 / seen.max(1) as f64,
                val_loss,
                val_accuracy: val_acc,
                seconds: started.elapsed().as_secs_f64(),
            };
            eprintln!(
                "epoch {}/{}: train loss {:.4} acc {:.3} | held-out loss {:.4} acc {:.3} ({} images) | {:.1} s",
                rec.epoch,
                args.epochs,
                rec.train_loss,
                rec.train_accuracy,
                rec.val_loss,
                rec.val_accuracy,
                val.samples.len(),
                rec.seconds
            );
            state.history.push(rec);
            state.epochs_done = epoch + 1;
            session.save_checkpoint(&ckpt_path)?;
            state.save(&state_path)?;
        }

        let last = state.history.last().cloned().ok_or_else(|| {
            anyhow::anyhow!(
                "nothing to export: the saved run already finished {} epochs",
                state.epochs_done
            )
        })?;
        export(
            &session,
            &meta,
            &out,
            &name,
            &train,
            &last,
            state.epochs_done,
        )?;
        eprintln!(
            "wrote {}/model.onnx, config.toml, labels.txt (held-out accuracy {:.3}); serve it with: wrn serve --models-dir {} --default-model {}",
            out.display(),
            last.val_accuracy,
            out.parent()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| ".".into()),
            name
        );
        Ok(())
    }
}

/// Positions, among the training outputs, of the BatchNorm statistics, with their checkpoint
/// entries.
fn stat_slots(meta: &ExportMeta, outputs: &[String]) -> anyhow::Result<Vec<(usize, String)>> {
    meta.bn_stat_updates
        .iter()
        .map(|u| {
            let i = outputs.iter().position(|o| *o == u.output).ok_or_else(|| {
                anyhow::anyhow!(
                    "training model has no output {:?} named in export_meta.json",
                    u.output
                )
            })?;
            Ok((i, u.parameter.clone()))
        })
        .collect()
}

/// Mean loss and accuracy over a dataset, eval graph, server preprocessing.
fn evaluate(
    session: &TrainSession,
    batcher: &Batcher,
    val: &Dataset,
    batch: usize,
    crop: usize,
    logits: &str,
) -> anyhow::Result<(f64, f64)> {
    let (mut loss_sum, mut correct) = (0f64, 0usize);
    let n = val.samples.len();
    let mut start = 0;
    while start < n {
        let end = (start + batch).min(n);
        let (x, y) = batcher.eval_batch(&val.samples, start..end)?;
        let out = session.eval_step(&[end - start, 3, crop, crop], x, y.clone(), Some(logits))?;
        loss_sum += f64::from(out.loss) * (end - start) as f64;
        correct += count_correct(&out.logits, &y);
        start = end;
    }
    Ok((loss_sum / n.max(1) as f64, correct as f64 / n.max(1) as f64))
}

/// Rows of `logits` whose arg-max is the label.
pub fn count_correct(logits: &[f32], labels: &[i64]) -> usize {
    if labels.is_empty() {
        return 0;
    }
    let classes = logits.len() / labels.len();
    logits
        .chunks_exact(classes.max(1))
        .zip(labels)
        .filter(|(row, y)| {
            let best = row
                .iter()
                .enumerate()
                .fold((0usize, f32::NEG_INFINITY), |b, (i, v)| {
                    if *v > b.1 { (i, *v) } else { b }
                });
            best.0 as i64 == **y
        })
        .count()
}

fn export(
    session: &TrainSession,
    meta: &ExportMeta,
    out: &Path,
    name: &str,
    train: &Dataset,
    last: &EpochRecord,
    epochs: usize,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let cfg = output::model_config(
        name,
        meta,
        &Provenance {
            epochs,
            val_accuracy: last.val_accuracy,
            train_images: train.samples.len(),
        },
    )?;
    // graph first, then config: a folder with config.toml always has its model
    let tmp = out.join("model.onnx.tmp");
    session.export(&tmp, &meta.logits)?;
    std::fs::rename(&tmp, out.join("model.onnx"))?;
    output::write_config_and_labels(out, &cfg, &train.classes)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn args(extra: &[&str]) -> TrainArgs {
        let mut argv = vec![
            "wrn",
            "train",
            "--artifacts",
            "a",
            "--data",
            "d",
            "--out",
            "o",
        ];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Train(a) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn cosine_schedule_falls_from_the_peak_to_zero() {
        let a = args(&["--lr", "0.1"]);
        assert!((learning_rate(&a, 0, 100, 0) - 0.1).abs() < 1e-7);
        assert!((learning_rate(&a, 50, 100, 5) - 0.05).abs() < 1e-6);
        assert!(learning_rate(&a, 100, 100, 9).abs() < 1e-7);
        let lrs: Vec<f32> = (0..=100).map(|s| learning_rate(&a, s, 100, 0)).collect();
        assert!(lrs.windows(2).all(|w| w[1] <= w[0]));
    }

    #[test]
    fn step_schedule_decays_every_n_epochs() {
        let a = args(&[
            "--lr",
            "0.1",
            "--schedule",
            "step",
            "--lr-step-epochs",
            "2",
            "--lr-gamma",
            "0.5",
        ]);
        let at = |e| learning_rate(&a, 0, 1, e);
        assert_eq!((at(0), at(1)), (0.1, 0.1));
        assert!((at(2) - 0.05).abs() < 1e-7 && (at(5) - 0.025).abs() < 1e-7);
        let c = args(&["--lr", "0.3", "--schedule", "constant"]);
        assert_eq!(learning_rate(&c, 7, 10, 3), 0.3);
    }

    #[test]
    fn unknown_schedule_is_a_usage_error() {
        let r = Cli::try_parse_from([
            "wrn",
            "train",
            "--artifacts",
            "a",
            "--data",
            "d",
            "--out",
            "o",
            "--schedule",
            "linear",
        ]);
        assert!(r.is_err());
    }

    #[test]
    fn accuracy_counts_argmax_hits() {
        let logits = [
            0.1, 0.9, 0.0, /**/ 2.0, 1.0, 0.5, /**/ 0.0, 0.0, 3.0,
        ];
        assert_eq!(count_correct(&logits, &[1, 0, 1]), 2);
        assert_eq!(count_correct(&[], &[]), 0);
    }
}
