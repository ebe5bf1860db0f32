//! The training-capable ONNX Runtime (issue 7): when the library exists, tiny artifacts
//! (deploy/ort-training/make_tiny_artifacts.py) are trained for a few optimizer steps
//! through `ort` from Rust (`wrn train --selftest`) and the loss must fall by half.
//!
//! The library needs glibc 2.38, so on a Debian 12 host the `wrn` binary runs through
//! `.cache/ort-training/run-in-userland.sh` (the userland's loader); in a trixie container it
//! runs directly. Without the library, its userland or the artifacts venv the test prints
//! `SKIP ...: reason` and passes, unless WRN_REQUIRE_TRAINING=1.

mod training;

#[test]
fn a_few_optimizer_steps_halve_the_loss() {
    const TEST: &str = "training_runtime::a_few_optimizer_steps_halve_the_loss";
    let Some(rt) = training::TrainingRuntime::find(TEST) else {
        return;
    };
    let Some(python) = training::artifacts_python(TEST) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let art = dir.path().join("tiny");
    training::run_ok(
        std::process::Command::new(&python)
            .arg(training::root().join("deploy/ort-training/make_tiny_artifacts.py"))
            .arg(&art),
        "make_tiny_artifacts.py",
    );
    let out = rt.wrn(&["train", "--selftest", "--artifacts", art.to_str().unwrap()]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if let Some(reason) = training::cannot_load(&text) {
        training::skip(TEST, &reason);
        return;
    }
    assert!(out.status.success(), "selftest failed:\n{text}");
    let losses: Vec<f32> = text
        .lines()
        .filter_map(|l| l.strip_prefix("step "))
        .filter_map(|l| l.split_whitespace().nth(2)?.parse().ok())
        .collect();
    assert_eq!(losses.len(), 30, "{text}");
    assert!(
        losses[29] < losses[0] * 0.5,
        "loss {} -> {}\n{text}",
        losses[0],
        losses[29]
    );
    assert!(text.contains("selftest PASS"), "{text}");
    assert!(text.contains("exported inference model"), "{text}");
    println!(
        "training runtime: loss {:.4} -> {:.4} in 30 AdamW steps",
        losses[0], losses[29]
    );
}
