//! Shared by tests/train.rs and tests/training_runtime.rs: finding the training-capable ONNX
//! Runtime and a way to run the `wrn` binary against it.

#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Prints the SKIP line, or panics when WRN_REQUIRE_TRAINING=1.
pub fn skip(test: &str, why: &str) {
    if std::env::var("WRN_REQUIRE_TRAINING").as_deref() == Ok("1") {
        panic!("{test}: {why}");
    }
    println!("SKIP {test}: {why}");
}

/// The training-capable library and how to start a program that can load it.
pub struct TrainingRuntime {
    pub lib: PathBuf,
    /// `run-in-userland.sh` when the library was built in a userland (Debian 12 hosts).
    pub launcher: Option<PathBuf>,
}

impl TrainingRuntime {
    /// `WRN_ORT_TRAINING_LIB`, else `.cache/ort-training/lib/libonnxruntime.so`.
    pub fn find(test: &str) -> Option<Self> {
        let lib = std::env::var_os("WRN_ORT_TRAINING_LIB")
            .map(PathBuf::from)
            .unwrap_or_else(|| root().join(".cache/ort-training/lib/libonnxruntime.so"));
        if !lib.is_file() {
            skip(
                test,
                &format!(
                    "no training-capable ONNX Runtime at {} (build it with deploy/ort-training/build.sh, or set WRN_ORT_TRAINING_LIB)",
                    lib.display()
                ),
            );
            return None;
        }
        let launcher = lib
            .parent()
            .and_then(Path::parent)
            .map(|cache| cache.join("run-in-userland.sh"))
            .filter(|p| p.is_file());
        Some(Self { lib, launcher })
    }

    /// Runs `wrn ARGS --ort-lib LIB` (through the userland's loader when there is one).
    pub fn wrn(&self, args: &[&str]) -> Output {
        let wrn = env!("CARGO_BIN_EXE_wrn");
        let mut cmd = match &self.launcher {
            Some(l) => {
                let mut c = Command::new(l);
                c.arg(wrn);
                c
            }
            None => Command::new(wrn),
        };
        cmd.args(args)
            .arg("--ort-lib")
            .arg(&self.lib)
            .env("ORT_DYLIB_PATH", &self.lib)
            .env("WRN_LOG_LEVEL", "warn,ort=error");
        cmd.output().expect("starting wrn")
    }
}

/// The reason a run could not even load the library (wrong glibc and the like), if that is
/// what `text` shows.
pub fn cannot_load(text: &str) -> Option<String> {
    let markers = ["GLIBC_", "cannot load ONNX Runtime", "version `GLIBCXX"];
    markers.iter().any(|m| text.contains(m)).then(|| {
        format!(
            "the training library does not load in this process: {}",
            text.lines()
                .find(|l| markers.iter().any(|m| l.contains(m)))
                .unwrap_or("")
        )
    })
}

/// The artifacts venv (onnxruntime-training-cpu==1.19.2 + onnx==1.16.2).
pub fn artifacts_python(test: &str) -> Option<PathBuf> {
    let p = root().join(".cache/ort-training/venv/bin/python");
    if p.is_file() {
        return Some(p);
    }
    skip(
        test,
        "no artifacts venv at .cache/ort-training/venv (python3 -m venv .cache/ort-training/venv && .cache/ort-training/venv/bin/pip install -r deploy/ort-training/requirements-artifacts.txt)",
    );
    None
}

/// The main venv (torch, torchvision, scikit-learn).
pub fn main_python(test: &str) -> Option<PathBuf> {
    let p = root().join(".venv/bin/python");
    if p.is_file() {
        return Some(p);
    }
    skip(test, "no .venv (deploy/scripts/setup-python.sh)");
    None
}

/// Runs a command and panics with its output when it fails.
pub fn run_ok(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
