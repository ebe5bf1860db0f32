//! Shared integration-test support: a real server on 127.0.0.1:0 with real gRPC clients.
//!
//! Tests need the ONNX Runtime library (`deploy/scripts/setup-ort.sh cpu`) and the
//! generated models, photos and references (`tests/python/generate_all.sh`). When they are
//! missing a test prints a SKIP line and returns, unless `WRN_REQUIRE_TEST_ASSETS=1` (set
//! by the README's test command and CI), where a missing asset fails the test.

#![allow(dead_code)]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::OnceLock,
    time::Duration,
};

use clap::Parser;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use wrn::{
    cli::{Cli, Command, ServeArgs},
    pb::classifier_client::ClassifierClient,
    runtime::Runtime,
};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn models_dir() -> PathBuf {
    root().join("models/repository")
}

pub fn photos_dir() -> PathBuf {
    root().join("models/photos")
}

pub fn generated() -> PathBuf {
    root().join("tests/data/generated")
}

/// Returns true when every path exists; otherwise prints SKIP (or panics under
/// WRN_REQUIRE_TEST_ASSETS=1).
pub fn require(test: &str, paths: &[PathBuf]) -> bool {
    let missing: Vec<String> = paths
        .iter()
        .filter(|p| !p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "missing {}; run deploy/scripts/setup-ort.sh cpu && deploy/scripts/setup-python.sh && tests/python/generate_all.sh",
        missing.join(", ")
    );
    if std::env::var("WRN_REQUIRE_TEST_ASSETS").as_deref() == Ok("1") {
        panic!("{test}: {why}");
    }
    println!("SKIP {test}: {why}");
    false
}

pub fn ort_lib() -> PathBuf {
    std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".ort/cpu/libonnxruntime.so"))
}

/// Assets for a server test of `models`.
pub fn assets(test: &str, models: &[&str]) -> bool {
    let mut paths = vec![ort_lib(), photos_dir()];
    for m in models {
        paths.push(models_dir().join(m).join("model.onnx"));
    }
    require(test, &paths)
}

/// ONNX Runtime is loaded once per process.
pub fn runtime() -> Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| wrn::runtime::load(Some(&ort_lib())).expect("loading ONNX Runtime"))
        .clone()
}

/// Server arguments as `wrn serve` would parse them, plus `extra` flags.
pub fn serve_args(models: &[&str], extra: &[&str]) -> ServeArgs {
    let models_dir = models_dir();
    let list = models.join(",");
    let mut argv = vec![
        "wrn",
        "serve",
        "--models-dir",
        models_dir.to_str().unwrap(),
        "--models",
        &list,
        "--default-model",
        models[0],
        "--warmup",
        "one",
    ];
    argv.extend_from_slice(extra);
    match Cli::try_parse_from(argv)
        .expect("valid test arguments")
        .command
    {
        Command::Serve(a) => *a,
        _ => unreachable!(),
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    pub async fn start(args: ServeArgs) -> TestServer {
        Self::start_with(args, false).await
    }

    pub async fn start_with(args: ServeArgs, with_metrics: bool) -> TestServer {
        let rt = runtime();
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = grpc.local_addr().unwrap();
        let metrics = if with_metrics {
            Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
        } else {
            None
        };
        let metrics_addr = metrics.as_ref().map(|l| l.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(wrn::server::run(args, rt, grpc, metrics, async move {
            let _ = rx.await;
        }));
        let server = TestServer {
            addr,
            metrics_addr,
            shutdown: Some(tx),
            task: Some(task),
        };
        server.wait_serving("").await;
        server
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .unwrap()
            .connect()
            .await
            .expect("connecting to the test server")
    }

    pub async fn client(&self) -> ClassifierClient<Channel> {
        ClassifierClient::new(self.channel().await)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(256 << 20)
    }

    pub async fn health(&self, service: &str) -> ServingStatus {
        let mut h = HealthClient::new(self.channel().await);
        let r = h
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check");
        r.into_inner().status()
    }

    /// Waits (up to 5 minutes: WRN-101-2 loads slowly on 2 cores) for SERVING.
    pub async fn wait_serving(&self, service: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        loop {
            if let Ok(ch) = Channel::from_shared(self.url()).unwrap().connect().await {
                let mut h = HealthClient::new(ch);
                if let Ok(r) = h
                    .check(HealthCheckRequest {
                        service: service.into(),
                    })
                    .await
                    && r.into_inner().status() == ServingStatus::Serving
                {
                    return;
                }
            }
            if let Some(t) = &self.task {
                assert!(!t.is_finished(), "server stopped during start-up");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "server did not become SERVING"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Signals shutdown and returns the server's result.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task
            .take()
            .unwrap()
            .await
            .expect("server task panicked")
    }

    pub fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub fn read(path: impl AsRef<Path>) -> Vec<u8> {
    std::fs::read(path.as_ref()).unwrap_or_else(|e| panic!("{}: {e}", path.as_ref().display()))
}

/// The photos used by the tests (sorted), as (name, bytes).
pub fn photos() -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(photos_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("jpg" | "png")))
        .collect();
    v.sort();
    v.into_iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                read(&p),
            )
        })
        .collect()
}

/// Reads a raw little-endian float32 file.
pub fn read_f32(path: impl AsRef<Path>) -> Vec<f32> {
    read(path)
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// A temporary model repository whose models are aliases (symlinked graph, copied labels,
/// config with a new name) of generated models: lets tests in one process use distinct
/// metric labels. `aliases` maps new name -> existing model.
pub fn alias_repo(aliases: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (alias, real) in aliases {
        let src = models_dir().join(real);
        let dst = dir.path().join(alias);
        std::fs::create_dir_all(&dst).unwrap();
        std::os::unix::fs::symlink(src.join("model.onnx"), dst.join("model.onnx")).unwrap();
        std::fs::copy(src.join("labels.txt"), dst.join("labels.txt")).unwrap();
        let cfg = std::fs::read_to_string(src.join("config.toml")).unwrap();
        let cfg = cfg.replacen(
            &format!("name = \"{real}\""),
            &format!("name = \"{alias}\""),
            1,
        );
        std::fs::write(dst.join("config.toml"), cfg).unwrap();
    }
    dir
}

/// Like [`serve_args`] but over another model repository.
pub fn serve_args_in(dir: &Path, models: &[&str], extra: &[&str]) -> ServeArgs {
    let mut a = serve_args(models, extra);
    a.models_dir = dir.to_path_buf();
    a
}

/// GET http://addr/metrics.
pub async fn scrape(addr: SocketAddr) -> String {
    wrn::bench::http_get(&format!("http://{addr}/metrics"))
        .await
        .expect("scraping /metrics")
}

/// The value of one sample line `name{labels...}` whose labels include every `want` pair.
pub fn sample(text: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, labels) = series.split_once('{').unwrap_or((series, ""));
        if n != name {
            return None;
        }
        want.iter()
            .all(|(k, v)| labels.contains(&format!("{k}=\"{v}\"")))
            .then(|| value.parse().ok())?
    })
}

/// Polls /metrics until `name{want}` equals `value` (up to 30 s).
pub async fn wait_metric(addr: SocketAddr, name: &str, want: &[(&str, &str)], value: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = scrape(addr).await;
        if sample(&text, name, want) == Some(value) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}{want:?} never reached {value}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A float32 tensor request of `n` images of `side` x `side`, all zeros.
pub fn zero_tensor_request(model: &str, n: usize, side: i64) -> wrn::pb::ClassifyRequest {
    wrn::pb::ClassifyRequest {
        model: model.into(),
        top_k: 5,
        images: vec![],
        tensor: Some(wrn::pb::Tensor {
            dtype: wrn::pb::DataType::Float32 as i32,
            shape: vec![n as i64, 3, side, side],
            raw_data: vec![0u8; n * 3 * (side * side) as usize * 4],
            float_data: vec![],
        }),
    }
}
