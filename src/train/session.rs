//! The ONNX Runtime training session: train and eval steps, optimizer, BatchNorm statistics,
//! checkpoints and the inference export.
//!
//! `ort` 2.0.0-rc.15's `Trainer::step`/`eval_step` always panic (they wrap the outputs without
//! the allocator they were made with), so the steps go through the crate's raw
//! `training_api()` and wrap the outputs with the default CPU allocator, call for call as
//! deploy/ort-training/train_smoke.c does. This is the only module of `wrn train` with
//! `unsafe`.

use std::{
    path::Path,
    ptr::{self, NonNull},
};

use anyhow::Context;
use ort::{
    AsPointer,
    error::Error as OrtError,
    memory::Allocator,
    session::Session,
    training::{Checkpoint, Trainer, training_api},
    value::{DynValue, Tensor},
};

use crate::runtime::Runtime;

/// Outputs of one step: the mean loss of the batch, the logits (when asked for) and every
/// user output in the model's order.
pub struct StepOutputs {
    pub loss: f32,
    pub logits: Vec<f32>,
    pub outputs: Vec<DynValue>,
}

/// A training session over one artifacts folder.
pub struct TrainSession {
    trainer: Trainer,
    train_outputs: Vec<String>,
    eval_outputs: Vec<String>,
    allocator: Allocator,
}

#[derive(Clone, Copy)]
enum Step {
    Train,
    Eval,
}

impl TrainSession {
    /// Opens the artifacts (`training_model.onnx`, `eval_model.onnx`, `optimizer_model.onnx`)
    /// with the artifacts' checkpoint, or `resume` instead.
    pub fn open(
        rt: &Runtime,
        artifacts: &Path,
        resume: Option<&Path>,
        threads: usize,
    ) -> anyhow::Result<Self> {
        let ckpt = match resume {
            Some(p) => Some(
                Checkpoint::load(p)
                    .map_err(|e| anyhow::anyhow!("cannot load checkpoint {}: {e}", p.display()))?,
            ),
            None => None,
        };
        let builder = Session::builder(&rt.env)?
            .with_intra_threads(threads)
            .map_err(|e| anyhow::anyhow!("session options: {e}"))?;
        let trainer = Trainer::new_from_artifacts(builder, Allocator::default(), artifacts, ckpt)
            .map_err(|e| {
            anyhow::anyhow!(
                "cannot open the training artifacts in {}: {e}",
                artifacts.display()
            )
        })?;
        let api = training_api()?;
        let sess = trainer.ptr();
        let train_outputs = names(
            sess,
            api.TrainingSessionGetTrainingModelOutputCount,
            api.TrainingSessionGetTrainingModelOutputName,
        )?;
        let eval_outputs = names(
            sess,
            api.TrainingSessionGetEvalModelOutputCount,
            api.TrainingSessionGetEvalModelOutputName,
        )?;
        Ok(Self {
            trainer,
            train_outputs,
            eval_outputs,
            allocator: Allocator::default(),
        })
    }

    pub fn train_outputs(&self) -> &[String] {
        &self.train_outputs
    }

    pub fn eval_outputs(&self) -> &[String] {
        &self.eval_outputs
    }

    /// Forward + backward on one batch (gradients accumulate until [`Self::optimizer_step`]).
    /// `x` is `[batch, rest...]` with `shape`; `y` the class indices.
    pub fn train_step(
        &self,
        shape: &[usize],
        x: Vec<f32>,
        y: Vec<i64>,
        logits: Option<&str>,
    ) -> anyhow::Result<StepOutputs> {
        self.step(Step::Train, shape, x, y, logits)
    }

    /// Forward only, eval-mode graph (BatchNorm running statistics, no dropout).
    pub fn eval_step(
        &self,
        shape: &[usize],
        x: Vec<f32>,
        y: Vec<i64>,
        logits: Option<&str>,
    ) -> anyhow::Result<StepOutputs> {
        self.step(Step::Eval, shape, x, y, logits)
    }

    fn step(
        &self,
        step: Step,
        shape: &[usize],
        x: Vec<f32>,
        y: Vec<i64>,
        logits: Option<&str>,
    ) -> anyhow::Result<StepOutputs> {
        let batch = y.len();
        let input = Tensor::from_array((shape.to_vec(), x)).context("input tensor")?;
        let labels = Tensor::from_array(([batch], y)).context("labels tensor")?;
        let inputs = [input.ptr(), labels.ptr()];
        let (names, run) = match step {
            Step::Train => (&self.train_outputs, training_api()?.TrainStep),
            Step::Eval => (&self.eval_outputs, training_api()?.EvalStep),
        };
        let mut outs = vec![ptr::null_mut::<ort::sys::OrtValue>(); names.len()];
        // SAFETY: the session pointer is live for &self; the inputs outlive the call; `outs`
        // has room for exactly the model's user outputs, which ORT allocates on the CPU with
        // the default allocator (hence that allocator when wrapping them).
        unsafe {
            OrtError::result_from_status(run(
                self.trainer.ptr().cast_mut(),
                ptr::null(),
                inputs.len(),
                inputs.as_ptr(),
                outs.len(),
                outs.as_mut_ptr(),
            ))
        }
        .map_err(|e| {
            anyhow::anyhow!(
                "{} step failed: {e}",
                if matches!(step, Step::Train) {
                    "training"
                } else {
                    "evaluation"
                }
            )
        })?;
        let outputs: Vec<DynValue> = outs
            .into_iter()
            .map(|p| {
                let p = NonNull::new(p)
                    .ok_or_else(|| anyhow::anyhow!("ONNX Runtime returned a null output"))?;
                // SAFETY: p is an OrtValue ORT just created and handed over to us.
                Ok(unsafe { DynValue::from_ptr(p, Some(&self.allocator)) })
            })
            .collect::<anyhow::Result<_>>()?;
        let loss = first_f32(&outputs[0]).context("reading the loss")?;
        let logits = match logits {
            Some(name) => {
                let li = names.iter().position(|n| n == name).ok_or_else(|| {
                    anyhow::anyhow!("the model has no output {name:?} (outputs: {names:?})")
                })?;
                let (_, l) = outputs[li]
                    .try_extract_tensor::<f32>()
                    .context("reading the logits")?;
                l.to_vec()
            }
            None => Vec::new(),
        };
        Ok(StepOutputs {
            loss,
            logits,
            outputs,
        })
    }

    /// Applies the accumulated gradients and clears them.
    pub fn optimizer_step(&self) -> anyhow::Result<()> {
        let mut opt = self.trainer.optimizer();
        opt.step().context("optimizer step")?;
        opt.reset_grad().context("resetting gradients")?;
        Ok(())
    }

    pub fn set_lr(&self, lr: f32) -> anyhow::Result<()> {
        self.trainer
            .optimizer()
            .set_lr(lr)
            .context("setting the learning rate")
    }

    /// Copies `value` into the checkpoint entry `name` (shared with the sessions): how the
    /// BatchNorm running statistics follow the training.
    pub fn update_parameter(&self, name: &str, value: &DynValue) -> anyhow::Result<()> {
        let cname = std::ffi::CString::new(name)?;
        let api = training_api()?;
        // SAFETY: the checkpoint is owned by the trainer and live for &self; UpdateParameter
        // copies the data (shapes are checked by ORT).
        unsafe {
            OrtError::result_from_status((api.UpdateParameter)(
                self.trainer.checkpoint().ptr().cast_mut(),
                cname.as_ptr(),
                value.ptr().cast_mut(),
            ))
        }
        .map_err(|e| anyhow::anyhow!("updating {name}: {e}"))
    }

    /// Trainable parameter count (elements).
    pub fn trainable_elements(&self) -> anyhow::Result<usize> {
        Ok(self.trainer.num_params(true)?)
    }

    /// Saves parameters and optimizer state.
    pub fn save_checkpoint(&self, path: &Path) -> anyhow::Result<()> {
        self.trainer
            .checkpoint()
            .save(path, true)
            .map_err(|e| anyhow::anyhow!("cannot save checkpoint {}: {e}", path.display()))
    }

    /// Writes the inference graph (eval graph trimmed to `output`, parameters as initializers).
    pub fn export(&self, path: &Path, output: &str) -> anyhow::Result<()> {
        self.trainer.export(path, [output]).map_err(|e| {
            anyhow::anyhow!(
                "cannot export the inference model to {}: {e}",
                path.display()
            )
        })
    }
}

fn first_f32(v: &DynValue) -> anyhow::Result<f32> {
    let (_, data) = v.try_extract_tensor::<f32>()?;
    data.first()
        .copied()
        .ok_or_else(|| anyhow::anyhow!("empty tensor"))
}

type CountFn = unsafe extern "system" fn(
    *const ort::sys::OrtTrainingSession,
    *mut usize,
) -> ort::sys::OrtStatusPtr;
type NameFn = unsafe extern "system" fn(
    *const ort::sys::OrtTrainingSession,
    usize,
    *mut ort::sys::OrtAllocator,
    *mut *const std::ffi::c_char,
) -> ort::sys::OrtStatusPtr;

fn names(
    sess: *const ort::sys::OrtTrainingSession,
    count: CountFn,
    name: NameFn,
) -> anyhow::Result<Vec<String>> {
    let allocator = Allocator::default();
    let mut n = 0usize;
    // SAFETY: plain queries on a live session; names are freed with the allocator that made them.
    unsafe { OrtError::result_from_status(count(sess, &mut n)) }?;
    (0..n)
        .map(|i| {
            let mut p: *const std::ffi::c_char = ptr::null();
            unsafe {
                OrtError::result_from_status(name(sess, i, allocator.ptr().cast_mut(), &mut p))
            }?;
            let s = unsafe { std::ffi::CStr::from_ptr(p) }
                .to_string_lossy()
                .into_owned();
            unsafe { allocator.free(p.cast_mut()) };
            Ok(s)
        })
        .collect()
}
