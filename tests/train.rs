//! `wrn train` end to end (issue 8).
//!
//! - With the ordinary inference library, `wrn train` stops with one clear line.
//! - With the training-capable library (tests/training/mod.rs finds it): scikit-learn's
//!   digits as PNG folders (tests/python/make_digits.py), training artifacts for a CIFAR
//!   WRN-10-1 with a new 10-class head (models/training_artifacts.py), a few epochs of
//!   `wrn train`; the loss must fall and the held-out accuracy be far above chance; then the
//!   exported folder is served with the inference library and Classify must name the right
//!   digit for images the training never saw. Otherwise a SKIP line.

mod common;
mod training;

use std::process::Command;

use wrn::pb::ClassifyRequest;

#[test]
fn train_with_the_inference_library_says_what_to_do_in_one_line() {
    const TEST: &str = "train::train_with_the_inference_library_says_what_to_do_in_one_line";
    let lib = common::ort_lib();
    if !common::require(TEST, std::slice::from_ref(&lib)) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wrn"))
        .args(["train", "--artifacts"])
        .arg(dir.path())
        .arg("--data")
        .arg(dir.path())
        .arg("--out")
        .arg(dir.path().join("m"))
        .arg("--ort-lib")
        .arg(&lib)
        .env("WRN_LOG_LEVEL", "warn")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("has no training API")
            && lines[0].contains("deploy/ort-training/build.sh"),
        "{stderr}"
    );
}

/// `epoch k/N: train loss X acc A | held-out loss Y acc B (...)` -> (X, B).
fn epoch_lines(text: &str) -> Vec<(f64, f64)> {
    text.lines()
        .filter(|l| l.starts_with("epoch ") && l.contains(": train loss"))
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let after = |key: &str, nth: usize| -> f64 {
                let i = words.iter().position(|w| *w == key).unwrap();
                words[i + nth].parse().unwrap()
            };
            (after("train", 2), after("held-out", 4))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fine_tunes_a_wrn_on_digits_and_serves_it() {
    const TEST: &str = "train::fine_tunes_a_wrn_on_digits_and_serves_it";
    let Some(rt) = training::TrainingRuntime::find(TEST) else {
        return;
    };
    if training::artifacts_python(TEST).is_none() {
        return;
    }
    let Some(python) = training::main_python(TEST) else {
        return;
    };
    if !common::require(TEST, &[common::ort_lib()]) {
        return;
    }
    let root = training::root();
    let dir = tempfile::tempdir().unwrap();
    let digits = dir.path().join("digits");
    let art = dir.path().join("art");
    let repo = dir.path().join("repo");
    training::run_ok(
        Command::new(&python)
            .arg(root.join("tests/python/make_digits.py"))
            .arg(&digits),
        "make_digits.py",
    );
    training::run_ok(
        Command::new(&python)
            .arg(root.join("models/training_artifacts.py"))
            .args([
                "--arch",
                "wrn-10-1",
                "--num-classes",
                "10",
                "--train-layers",
                "all",
            ])
            .args(["--seed", "0", "--out"])
            .arg(&art),
        "training_artifacts.py",
    );
    // three epochs, then --resume for the fourth: the resumed run continues the same run
    let out_dir = repo.join("digits");
    let data_arg = digits.join("train");
    let mut text = String::new();
    for (epochs, resume) in [("3", false), ("4", true)] {
        let mut a = vec![
            "train",
            "--artifacts",
            art.to_str().unwrap(),
            "--data",
            data_arg.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
            "--epochs",
            epochs,
            "--batch-size",
            "32",
            "--lr",
            "0.005",
            "--no-hflip",
            "--min-crop-scale",
            "0.6",
            "--log-every",
            "20",
        ];
        if resume {
            a.push("--resume");
        }
        let out = rt.wrn(&a);
        let part = String::from_utf8_lossy(&out.stderr).into_owned();
        if let Some(reason) = training::cannot_load(&part) {
            training::skip(TEST, &reason);
            return;
        }
        println!("{part}");
        assert!(
            out.status.success(),
            "wrn train (epochs {epochs}, resume {resume}) failed:\n{part}"
        );
        text.push_str(&part);
    }
    assert!(text.contains("resuming after epoch 3"), "{text}");
    let epochs = epoch_lines(&text);
    assert_eq!(epochs.len(), 4, "{text}");
    assert!(
        epochs[3].0 < epochs[0].0,
        "training loss did not fall: {epochs:?}"
    );
    assert!(
        epochs[3].1 > 0.5,
        "held-out accuracy {} is not far above chance (0.1): {epochs:?}",
        epochs[3].1
    );
    let state = std::fs::read_to_string(dir.path().join("repo/digits.ckpt/state.json")).unwrap();
    assert!(state.contains("\"epochs_done\": 4"), "{state}");
    for f in ["model.onnx", "config.toml", "labels.txt"] {
        assert!(repo.join("digits").join(f).is_file(), "{f} missing");
    }

    // serve the exported folder with the ordinary inference library
    let server = common::TestServer::start(common::serve_args_in(&repo, &["digits"], &[])).await;
    let mut client = server.client().await;
    let mut images = Vec::new();
    let mut want = Vec::new();
    for d in 0..10 {
        let folder = digits.join("heldout").join(d.to_string());
        let mut files: Vec<_> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files.into_iter().take(3) {
            images.push(std::fs::read(f).unwrap());
            want.push(d.to_string());
        }
    }
    let resp = client
        .classify(ClassifyRequest {
            model: "digits".into(),
            top_k: 1,
            images,
            tensor: None,
        })
        .await
        .expect("Classify")
        .into_inner();
    let got: Vec<String> = resp
        .results
        .iter()
        .map(|r| r.classes[0].label.clone())
        .collect();
    let right = got.iter().zip(&want).filter(|(g, w)| g == w).count();
    println!(
        "served model: {right}/{} held-out digits right ({got:?})",
        want.len()
    );
    assert!(
        right * 10 >= want.len() * 7,
        "only {right}/{} held-out digits classified right: got {got:?}, want {want:?}",
        want.len()
    );
    server.stop().await.unwrap();
}
