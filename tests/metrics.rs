//! Prometheus metrics after a known amount of traffic: exact counters and histogram counts,
//! a real text-format parser, and the README's metric table against what /metrics serves.

mod common;

use std::collections::BTreeSet;

use tonic::Code;
use wrn::pb::ClassifyRequest;

use common::{TestServer, sample};

const SMALL: &str = "wrn_16_4";
const NAME: &str = "mx";

fn req(images: Vec<Vec<u8>>) -> ClassifyRequest {
    ClassifyRequest {
        model: NAME.into(),
        top_k: 3,
        images,
        tensor: None,
    }
}

/// Metric family names in an exposition (histograms by their base name).
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_and_histograms_after_known_traffic() {
    if !common::assets("counters_and_histograms_after_known_traffic", &[SMALL]) {
        return;
    }
    let repo = common::alias_repo(&[(NAME, SMALL)]);
    let args = common::serve_args_in(repo.path(), &[NAME], &["--queue-capacity", "4"]);
    let server = TestServer::start_with(args, true).await;
    let addr = server.metrics_addr.unwrap();
    let mut c = server.client().await;
    let photos = common::photos();
    // 5 successes of 2 images each.
    for i in 0..5 {
        let r = c
            .classify(req(vec![photos[i].1.clone(), photos[i + 1].1.clone()]))
            .await
            .unwrap();
        assert!(
            r.metadata().get("x-request-id").is_some(),
            "the request id is echoed"
        );
    }
    // 3 bad inputs.
    for bad in [b"garbage".to_vec(), vec![], photos[0].1[..64].to_vec()] {
        assert_eq!(
            c.classify(req(vec![bad])).await.unwrap_err().code(),
            Code::InvalidArgument
        );
    }
    // 1 request larger than the whole queue.
    let e = c
        .classify(req(vec![photos[0].1.clone(); 5]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    // The caller's request id comes back.
    let mut r = tonic::Request::new(req(vec![photos[2].1.clone()]));
    r.metadata_mut()
        .insert("x-request-id", "req-abc-123".parse().unwrap());
    let resp = c.classify(r).await.unwrap();
    assert_eq!(resp.metadata().get("x-request-id").unwrap(), "req-abc-123");

    let text = common::scrape(addr).await;
    let m = |name: &str, extra: &[(&str, &str)]| {
        let mut want = vec![("model", NAME)];
        want.extend_from_slice(extra);
        sample(&text, name, &want)
    };
    assert_eq!(
        m(
            "wrn_requests_total",
            &[("method", "Classify"), ("code", "OK")]
        ),
        Some(6.0),
        "{text}"
    );
    assert_eq!(
        m("wrn_requests_total", &[("code", "INVALID_ARGUMENT")]),
        Some(3.0)
    );
    assert_eq!(
        m("wrn_requests_total", &[("code", "RESOURCE_EXHAUSTED")]),
        Some(1.0)
    );
    assert_eq!(
        m("wrn_request_duration_seconds_count", &[("code", "OK")]),
        Some(6.0)
    );
    assert_eq!(
        m("wrn_failures_total", &[("reason", "bad_input")]),
        Some(3.0)
    );
    assert_eq!(m("wrn_failures_total", &[("reason", "limit")]), Some(1.0));
    assert_eq!(
        m("wrn_images_total", &[]),
        Some(11.0),
        "images accepted into the queue"
    );
    assert_eq!(m("wrn_queue_wait_seconds_count", &[]), Some(11.0));
    assert_eq!(
        m("wrn_batch_size_sum", &[]),
        Some(11.0),
        "every accepted image ran exactly once"
    );
    let batches = m("wrn_batches_total", &[]).unwrap();
    assert_eq!(m("wrn_batch_size_count", &[]), Some(batches));
    assert_eq!(m("wrn_compute_seconds_count", &[]), Some(batches));
    // Preprocessing ran for the 11 good images and the 3 bad ones; the oversized request
    // was refused at the door, before any decoding.
    assert_eq!(m("wrn_preprocess_seconds_count", &[]), Some(11.0 + 3.0));
    assert_eq!(m("wrn_queue_depth", &[]), Some(0.0));
    assert_eq!(m("wrn_requests_in_flight", &[]), Some(0.0));
    assert_eq!(
        m("wrn_model_instances_ready", &[("provider", "cpu")]),
        Some(1.0)
    );
    assert!(
        text.contains("le=\"0.001\"") && text.contains("le=\"10\""),
        "latency buckets span 1 ms to 10 s"
    );
    assert!(sample(&text, "wrn_build_info", &[]).is_some());
    for process in [
        "wrn_process_resident_memory_bytes",
        "wrn_process_cpu_seconds_total",
        "wrn_process_open_fds",
    ] {
        assert!(
            sample(&text, process, &[]).is_some_and(|v| v > 0.0),
            "{process} missing: {text}"
        );
    }

    // A real Prometheus text-format parser accepts the exposition.
    let python = common::root().join(".venv/bin/python");
    if python.exists() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("metrics.txt");
        std::fs::write(&f, &text).unwrap();
        let out = std::process::Command::new(&python)
            .args([
                "-c",
                "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as p\n\
                 fams = list(p(open(sys.argv[1]).read()))\nprint(len(fams), sum(len(f.samples) for f in fams))",
                f.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "prometheus_client rejects the exposition: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        println!(
            "prometheus_client parsed: {}",
            String::from_utf8_lossy(&out.stdout).trim()
        );
    } else if std::env::var("WRN_REQUIRE_TEST_ASSETS").as_deref() == Ok("1") {
        panic!(".venv/bin/python missing: run deploy/scripts/setup-python.sh");
    } else {
        println!("SKIP parser check: .venv/bin/python missing (deploy/scripts/setup-python.sh)");
    }

    // The README's metric table lists exactly what is served.
    let readme = std::fs::read_to_string(common::root().join("README.md")).unwrap_or_default();
    let table = readme
        .split("<!-- metrics:begin -->")
        .nth(1)
        .and_then(|r| r.split("<!-- metrics:end -->").next())
        .expect(
            "README.md has a metrics table between <!-- metrics:begin --> and <!-- metrics:end -->",
        );
    let documented: BTreeSet<String> = table
        .lines()
        .filter_map(|l| l.split('`').nth(1))
        .filter(|n| n.starts_with("wrn_"))
        .map(str::to_string)
        .collect();
    let served: BTreeSet<String> = families(&text)
        .into_iter()
        .filter(|n| n.starts_with("wrn_"))
        .collect();
    assert_eq!(documented, served, "README metric table vs /metrics");
    server.stop().await.unwrap();
}
