//! Finding and loading the ONNX Runtime shared library, and the execution-provider
//! decision (which provider a model ends up on, and why).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// Where the setup script puts the CPU library, relative to the repository root.
pub const DEFAULT_LIB_RELATIVE: &str = ".ort/cpu/libonnxruntime.so";
/// Where container images put it.
pub const CONTAINER_LIB: &str = "/opt/onnxruntime/lib/libonnxruntime.so";

/// The places searched when neither `--ort-lib` nor `ORT_DYLIB_PATH` is given: the
/// current directory and every ancestor of the executable (so `target/release/wrn` finds
/// the repository's `.ort/`), then the container location.
pub fn default_candidates() -> Vec<PathBuf> {
    let mut out = vec![PathBuf::from(DEFAULT_LIB_RELATIVE)];
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1) {
            out.push(dir.join(DEFAULT_LIB_RELATIVE));
        }
    }
    out.push(PathBuf::from(CONTAINER_LIB));
    out
}

/// Resolves the library path: an explicit path must exist; otherwise the first default
/// candidate that exists.
pub fn locate_library(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        bail!(
            "ONNX Runtime library {} (from --ort-lib / ORT_DYLIB_PATH) does not exist; run deploy/scripts/setup-ort.sh cpu or fix the path",
            p.display()
        );
    }
    default_candidates().into_iter().find(|p| p.is_file()).ok_or_else(|| {
        anyhow::anyhow!(
            "ONNX Runtime library not found (looked for {DEFAULT_LIB_RELATIVE} and {CONTAINER_LIB}); run deploy/scripts/setup-ort.sh cpu, or pass --ort-lib PATH / set ORT_DYLIB_PATH"
        )
    })
}

/// A loaded ONNX Runtime.
#[derive(Clone)]
pub struct Runtime {
    pub env: ort::environment::Environment,
    pub library: PathBuf,
    pub version: String,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("library", &self.library)
            .field("version", &self.version)
            .finish()
    }
}

/// Loads the library once per process and builds the ORT environment.
pub fn load(explicit: Option<&Path>) -> anyhow::Result<Runtime> {
    let library = locate_library(explicit)?;
    let library = library.canonicalize().unwrap_or(library);
    let builder = ort::init_from(&library)
        .map_err(|e| anyhow::anyhow!("cannot load ONNX Runtime from {}: {e}", library.display()))?;
    let env = builder
        .with_name("wrn")
        .with_telemetry(false)
        .build()
        .context("cannot create the ONNX Runtime environment")?;
    let version = version_of(&library);
    Ok(Runtime {
        env,
        library,
        version,
    })
}

fn version_of(library: &Path) -> String {
    // libonnxruntime.so -> libonnxruntime.so.1.31.1: the version is in the link target.
    let target = std::fs::canonicalize(library).unwrap_or_else(|_| library.to_path_buf());
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.strip_prefix("libonnxruntime.so.")
        .unwrap_or("unknown")
        .to_string()
}

/// Whether the loaded library was built with the on-device training API.
pub fn has_training_api() -> bool {
    let api = ort::api();
    // SAFETY: GetTrainingApi is a plain query on the loaded library; it returns null when
    // the library was built without training support.
    let ptr = unsafe { (api.GetTrainingApi)(ort::MINOR_VERSION) };
    !ptr.is_null()
}

/// The outcome of walking the ordered provider list for one model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderChoice<T> {
    pub value: T,
    /// Config name of the provider in use (`tensorrt`, `cuda` or `cpu`).
    pub provider: String,
    /// Providers tried before it, with the reason each was skipped.
    pub skipped: Vec<(String, String)>,
}

/// Tries each provider in order; the first that works wins. With `require_gpu`, ending on
/// the CPU is an error that names every provider's failure.
pub fn choose_provider<T>(
    requested: &[String],
    require_gpu: bool,
    mut try_one: impl FnMut(&str) -> Result<T, String>,
) -> Result<ProviderChoice<T>, String> {
    let mut skipped = Vec::new();
    for name in requested {
        if require_gpu && name == "cpu" {
            continue;
        }
        match try_one(name) {
            Ok(value) => {
                return Ok(ProviderChoice {
                    value,
                    provider: name.clone(),
                    skipped,
                });
            }
            Err(reason) => skipped.push((name.clone(), reason)),
        }
    }
    let tried: Vec<String> = skipped.iter().map(|(n, r)| format!("{n}: {r}")).collect();
    if require_gpu {
        if tried.is_empty() {
            return Err("--require-gpu is set but the execution providers list names no GPU provider (add tensorrt or cuda)".into());
        }
        return Err(format!(
            "--require-gpu is set and no GPU execution provider could be used ({})",
            tried.join("; ")
        ));
    }
    Err(format!(
        "no execution provider could be used ({})",
        tried.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn first_working_provider_wins_and_skips_are_recorded() {
        let choice = choose_provider(&names(&["tensorrt", "cuda", "cpu"]), false, |p| match p {
            "tensorrt" => Err("libnvinfer.so.10 not found".to_string()),
            "cuda" => Err("no CUDA device".to_string()),
            _ => Ok(p.to_string()),
        })
        .unwrap();
        assert_eq!(choice.provider, "cpu");
        assert_eq!(choice.skipped.len(), 2);
        assert_eq!(choice.skipped[0].0, "tensorrt");
        assert!(choice.skipped[1].1.contains("no CUDA device"));
    }

    #[test]
    fn cuda_is_used_when_tensorrt_fails() {
        let choice = choose_provider(&names(&["tensorrt", "cuda", "cpu"]), true, |p| {
            if p == "cuda" { Ok(1) } else { Err("x".into()) }
        })
        .unwrap();
        assert_eq!(choice.provider, "cuda");
    }

    #[test]
    fn require_gpu_refuses_to_fall_back_to_cpu() {
        let mut tried = Vec::new();
        let err = choose_provider(&names(&["cuda", "cpu"]), true, |p| {
            tried.push(p.to_string());
            Err::<(), _>("libcudart.so.13 not found".into())
        })
        .unwrap_err();
        assert_eq!(tried, vec!["cuda"], "cpu must not even be tried");
        assert!(
            err.contains("--require-gpu") && err.contains("libcudart"),
            "{err}"
        );
        let err = choose_provider(&names(&["cpu"]), true, |_| Ok(())).unwrap_err();
        assert!(err.contains("names no GPU provider"), "{err}");
    }

    #[test]
    fn explicit_missing_library_names_the_setup_script() {
        let err = locate_library(Some(Path::new("/nonexistent/libonnxruntime.so")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("setup-ort.sh"), "{err}");
    }
}
