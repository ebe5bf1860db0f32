//! `wrn train --selftest`: the training runtime end to end on the tiny MLP artifacts of
//! deploy/ort-training/make_tiny_artifacts.py (input f32[batch, F] -> logits [batch, C],
//! cross-entropy, AdamW). A toy problem whose class c has feature c high must have its loss
//! halved within 30 steps; then one eval step and an inference export. Used by
//! tests/training_runtime.rs, which runs it inside the training library's userland.

use std::path::Path;

use anyhow::{Context, bail};
use serde::Deserialize;

use super::session::TrainSession;
use crate::runtime::Runtime;

#[derive(Deserialize)]
struct TinyMeta {
    features: usize,
    classes: usize,
}

const STEPS: usize = 30;
const BATCH: usize = 12;

pub fn run(rt: &Runtime, artifacts: &Path, threads: usize) -> anyhow::Result<()> {
    let meta_path = artifacts.join("meta.json");
    let meta: TinyMeta = serde_json::from_str(
        &std::fs::read_to_string(&meta_path)
            .with_context(|| format!("cannot read {}", meta_path.display()))?,
    )
    .with_context(|| {
        format!(
            "{} is not make_tiny_artifacts.py's meta.json",
            meta_path.display()
        )
    })?;
    if meta.features < meta.classes {
        bail!("the selftest needs at least as many features as classes");
    }
    let session = TrainSession::open(rt, artifacts, None, threads)?;
    println!("onnxruntime {} at {}", rt.version, rt.library.display());
    println!("training outputs: {:?}", session.train_outputs());
    // a separable toy set: class c has feature c at +2, the others small noise
    let mut seed = 12345u32;
    let mut x = vec![0f32; BATCH * meta.features];
    let mut y = vec![0i64; BATCH];
    for i in 0..BATCH {
        y[i] = (i % meta.classes) as i64;
        for f in 0..meta.features {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let noise = (((seed >> 16) & 0x7fff) as f32 / 32768.0 - 0.5) * 0.5;
            x[i * meta.features + f] = if f as i64 == y[i] { 2.0 } else { 0.0 } + noise;
        }
    }
    let shape = [BATCH, meta.features];
    session.set_lr(0.01)?;
    let (mut first, mut last) = (f32::NAN, f32::NAN);
    for step in 0..STEPS {
        let out = session.train_step(&shape, x.clone(), y.clone(), None)?;
        session.optimizer_step()?;
        if step == 0 {
            first = out.loss;
        }
        last = out.loss;
        println!("step {step:2} loss {:.4}", out.loss);
    }
    let eval = session.eval_step(&shape, x, y, None)?;
    println!("eval loss {:.4}", eval.loss);
    let export = std::env::temp_dir().join(format!("wrn-selftest-{}.onnx", std::process::id()));
    session.export(&export, "logits")?;
    let size = std::fs::metadata(&export).map(|m| m.len()).unwrap_or(0);
    let _ = std::fs::remove_file(&export);
    println!("exported inference model: {size} bytes");
    if last.is_nan() || last >= first * 0.5 {
        bail!("selftest FAIL: loss {first:.4} -> {last:.4} over {STEPS} steps did not halve");
    }
    println!("selftest PASS: loss {first:.4} -> {last:.4} over {STEPS} steps");
    Ok(())
}
