//! Execution-provider fallback through a real ONNX Runtime: the CPU build has no CUDA or
//! TensorRT provider, so asking for them must fall back to the CPU with a reason, or fail
//! start-up under --require-gpu.

mod common;

use wrn::pb::GetModelRequest;

use common::TestServer;

const SMALL: &str = "wrn_16_4";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_gpu_providers_fall_back_to_cpu_and_are_reported() {
    if !common::assets(
        "unavailable_gpu_providers_fall_back_to_cpu_and_are_reported",
        &[SMALL],
    ) {
        return;
    }
    let args = common::serve_args(&[SMALL], &["--execution-providers", "tensorrt,cuda,cpu"]);
    let server = TestServer::start(args).await;
    let mut c = server.client().await;
    let info = c
        .get_model(GetModelRequest {
            model: SMALL.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.execution_provider, "cpu", "fell back to the CPU");
    assert_eq!(
        info.requested_execution_providers,
        vec!["tensorrt", "cuda", "cpu"]
    );
    let ok = c
        .classify(common::zero_tensor_request(SMALL, 2, 32))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.results.len(), 2);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_gpu_fails_start_up_with_the_reasons() {
    if !common::assets("require_gpu_fails_start_up_with_the_reasons", &[SMALL]) {
        return;
    }
    let args = common::serve_args(
        &[SMALL],
        &["--execution-providers", "cuda,cpu", "--require-gpu"],
    );
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let result =
        wrn::server::run(args, common::runtime(), grpc, None, std::future::pending()).await;
    let err = format!(
        "{:#}",
        result.expect_err("start-up must fail without a GPU provider")
    );
    assert!(err.contains("--require-gpu"), "{err}");
    assert!(err.contains("cuda:"), "names the CUDA failure: {err}");
}

#[test]
fn require_gpu_on_the_command_line_exits_non_zero_with_one_message() {
    if !common::assets(
        "require_gpu_on_the_command_line_exits_non_zero_with_one_message",
        &[SMALL],
    ) {
        return;
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wrn"))
        .args([
            "serve",
            "--models-dir",
            common::models_dir().to_str().unwrap(),
            "--models",
            SMALL,
            "--addr",
            "127.0.0.1:0",
            "--no-metrics",
            "--ort-lib",
            common::ort_lib().to_str().unwrap(),
            "--execution-providers",
            "cuda",
            "--require-gpu",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.lines()
            .any(|l| l.starts_with("error:") && l.contains("--require-gpu")),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
