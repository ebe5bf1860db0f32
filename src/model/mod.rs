//! A model instance: one thread's ONNX Runtime session for one model, with the input and
//! output names and shapes read from the graph rather than assumed.

pub mod topk;

use std::path::Path;

use ort::{
    ep,
    session::{Session, builder::GraphOptimizationLevel},
    value::TensorRef,
};

use crate::{
    config::{ModelConfig, RuntimeConfig},
    runtime::Runtime,
};

/// What the graph declares, checked against the model config.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphInfo {
    pub input_name: String,
    /// `[-1, 3, H, W]`: -1 marks a dynamic axis.
    pub input_shape: Vec<i64>,
    pub output_name: String,
    pub num_classes: usize,
}

/// One ORT session. Owned by exactly one worker thread; never shared behind a lock.
pub struct Instance {
    session: Session,
    pub info: GraphInfo,
    /// Config name of the execution provider in use.
    pub provider: String,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("info", &self.info)
            .field("provider", &self.provider)
            .finish()
    }
}

fn opt_level(name: &str) -> GraphOptimizationLevel {
    match name {
        "disable" => GraphOptimizationLevel::Disable,
        "basic" => GraphOptimizationLevel::Level1,
        "extended" => GraphOptimizationLevel::Level2,
        _ => GraphOptimizationLevel::All,
    }
}

/// Builds the ORT execution provider for one config name, failing loudly on registration.
fn provider_dispatch(
    name: &str,
    rt: &RuntimeConfig,
    cfg: &ModelConfig,
    info_hint: Option<&GraphInfo>,
) -> ep::ExecutionProviderDispatch {
    match name {
        "tensorrt" => {
            let t = &rt.tensorrt;
            let mut trt = ep::TensorRT::default()
                .with_device_id(t.device_id)
                .with_fp16(t.fp16)
                .with_engine_cache(true)
                .with_engine_cache_path(&t.cache_dir)
                .with_timing_cache(true)
                .with_timing_cache_path(&t.cache_dir)
                .with_max_workspace_size(t.workspace_bytes as usize);
            if t.int8
                && let Some(table) = &t.int8_calibration_table
            {
                trt = trt.with_int8(true).with_int8_calibration_table_name(table);
            }
            if let Some(info) = info_hint {
                let max = cfg.batching.max_batch_size;
                let opt = if t.opt_batch_size > 0 {
                    t.opt_batch_size
                } else {
                    max.div_ceil(2).max(1)
                };
                let dims = |b: usize| {
                    let crop = cfg.preprocess.crop;
                    format!("{}:{}x3x{}x{}", info.input_name, b, crop, crop)
                };
                trt = trt
                    .with_profile_min_shapes(dims(1))
                    .with_profile_opt_shapes(dims(opt))
                    .with_profile_max_shapes(dims(max));
            }
            trt.build().error_on_failure()
        }
        "cuda" => {
            let c = &rt.cuda;
            let search = match c.conv_algo_search.as_str() {
                "heuristic" => ep::cuda::ConvAlgorithmSearch::Heuristic,
                "default" => ep::cuda::ConvAlgorithmSearch::Default,
                _ => ep::cuda::ConvAlgorithmSearch::Exhaustive,
            };
            let mut cuda = ep::CUDA::default()
                .with_device_id(c.device_id)
                .with_conv_algorithm_search(search);
            if c.memory_limit_bytes > 0 {
                cuda = cuda.with_memory_limit(c.memory_limit_bytes as usize);
            }
            // CUDA graphs replay fixed shapes only: enable them only for a single batch size.
            if c.cuda_graph && cfg.batching.max_batch_size == 1 {
                cuda = cuda.with_cuda_graph(true);
            }
            cuda.build().error_on_failure()
        }
        _ => ep::CPU::default().build().error_on_failure(),
    }
}

/// Reads input/output names and shapes from a session and checks them against the config.
pub fn graph_info(
    session: &Session,
    cfg: &ModelConfig,
    labels: usize,
) -> Result<GraphInfo, String> {
    let inputs = session.inputs();
    let outputs = session.outputs();
    if inputs.len() != 1 {
        return Err(format!(
            "graph has {} inputs; exactly one image input is supported",
            inputs.len()
        ));
    }
    if outputs.is_empty() {
        return Err("graph has no outputs".into());
    }
    let input = &inputs[0];
    let output = &outputs[0];
    let ishape: Vec<i64> = input
        .dtype()
        .tensor_shape()
        .ok_or_else(|| format!("input {:?} is not a tensor", input.name()))?
        .iter()
        .copied()
        .collect();
    if input.dtype().tensor_type() != Some(ort::value::TensorElementType::Float32) {
        return Err(format!("input {:?} must be float32", input.name()));
    }
    let crop = i64::from(cfg.preprocess.crop);
    let fits = |d: i64, want: i64| d == want || d < 0;
    if ishape.len() != 4 || !fits(ishape[1], 3) || !fits(ishape[2], crop) || !fits(ishape[3], crop)
    {
        return Err(format!(
            "input {:?} has shape {ishape:?}; expected [N, 3, {crop}, {crop}] to match preprocess.crop",
            input.name()
        ));
    }
    if ishape[0] > 0 && ishape[0] < cfg.batching.max_batch_size as i64 {
        return Err(format!(
            "input batch axis is fixed at {} but batching.max_batch_size is {}; export with a dynamic batch axis",
            ishape[0], cfg.batching.max_batch_size
        ));
    }
    let oshape: Vec<i64> = output
        .dtype()
        .tensor_shape()
        .ok_or_else(|| format!("output {:?} is not a tensor", output.name()))?
        .iter()
        .copied()
        .collect();
    if oshape.len() != 2 {
        return Err(format!(
            "output {:?} has shape {oshape:?}; expected [N, classes]",
            output.name()
        ));
    }
    let num_classes = if oshape[1] > 0 {
        oshape[1] as usize
    } else {
        labels
    };
    if num_classes != labels {
        return Err(format!(
            "graph has {num_classes} classes but the labels file has {labels} lines"
        ));
    }
    Ok(GraphInfo {
        input_name: input.name().to_string(),
        input_shape: ishape,
        output_name: output.name().to_string(),
        num_classes,
    })
}

impl Instance {
    /// Opens `model_path` with the given provider (config name).
    pub fn open(
        rt: &Runtime,
        cfg: &ModelConfig,
        model_path: &Path,
        provider: &str,
        labels: usize,
    ) -> Result<Self, String> {
        let r = &cfg.runtime;
        let build = |hint: Option<&GraphInfo>| -> ort::Result<Session> {
            let mut b = Session::builder(&rt.env)?
                .with_optimization_level(opt_level(&r.graph_optimization_level))?
                .with_intra_threads(r.intra_op_threads)?
                .with_inter_threads(r.inter_op_threads)?
                .with_parallel_execution(r.inter_op_threads > 1)?
                .with_intra_op_spinning(r.intra_op_spinning)?
                .with_execution_providers([provider_dispatch(provider, r, cfg, hint)])?;
            b.commit_from_file(model_path)
        };
        // TensorRT needs the input name for its optimisation profile: read it from a CPU
        // session first (cheap: no engines are built).
        let hint = if provider == "tensorrt" {
            let cpu = Instance::open(rt, cfg, model_path, "cpu", labels)?;
            Some(cpu.info)
        } else {
            None
        };
        let session = build(hint.as_ref()).map_err(|e| e.to_string())?;
        let info = graph_info(&session, cfg, labels)?;
        Ok(Self {
            session,
            info,
            provider: provider.to_string(),
        })
    }

    /// Runs one batch: `input` holds `batch` images of `3*H*W` floats; returns
    /// `batch * num_classes` logits.
    pub fn run(&mut self, input: &[f32], batch: usize) -> Result<Vec<f32>, String> {
        let per = input.len() / batch.max(1);
        let side = ((per / 3) as f64).sqrt() as usize;
        let shape = [batch, 3, side, side];
        let tensor = TensorRef::from_array_view((shape, input)).map_err(|e| e.to_string())?;
        let outputs = self
            .session
            .run(ort::inputs![self.info.input_name.as_str() => tensor])
            .map_err(|e| e.to_string())?;
        let out = outputs
            .get(&self.info.output_name)
            .ok_or_else(|| format!("output {:?} missing", self.info.output_name))?;
        let (oshape, data) = out.try_extract_tensor::<f32>().map_err(|e| e.to_string())?;
        let expect = batch * self.info.num_classes;
        if data.len() != expect {
            return Err(format!(
                "output has shape {oshape:?}, expected [{batch}, {}]",
                self.info.num_classes
            ));
        }
        Ok(data.to_vec())
    }
}
