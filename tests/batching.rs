//! Dynamic batching through a real server: answers never get mixed up under concurrency,
//! batched and unbatched results agree, bad inputs never fail their neighbours, the queue
//! is bounded, deadlines are honoured, and shutdown drains in-flight work.

mod common;

use std::{io::Cursor, time::Duration};

use futures::future::join_all;
use image::{DynamicImage, ImageFormat, RgbImage};
use tonic::{Code, Request};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use wrn::pb::{ClassifyRequest, ClassifyResponse};

use common::TestServer;

const SMALL: &str = "wrn_16_4";
const M50: &str = "wide_resnet50_2";

/// `n` distinct PNG images: different crops of the test photos.
fn distinct_images(n: usize) -> Vec<Vec<u8>> {
    let photos: Vec<RgbImage> = common::photos()
        .into_iter()
        .map(|(_, b)| image::load_from_memory(&b).unwrap().to_rgb8())
        .collect();
    (0..n)
        .map(|i| {
            let p = &photos[i % photos.len()];
            let (w, h) = p.dimensions();
            let side = (w.min(h) / 2).max(8);
            let x = (i as u32 * 37) % (w - side);
            let y = (i as u32 * 53) % (h - side);
            let crop = image::imageops::crop_imm(p, x, y, side, side).to_image();
            let mut buf = Cursor::new(Vec::new());
            DynamicImage::ImageRgb8(crop)
                .write_to(&mut buf, ImageFormat::Png)
                .unwrap();
            buf.into_inner()
        })
        .collect()
}

fn req(model: &str, images: Vec<Vec<u8>>) -> ClassifyRequest {
    ClassifyRequest {
        model: model.into(),
        top_k: 10,
        images,
        tensor: None,
    }
}

fn probs(r: &ClassifyResponse, i: usize) -> Vec<(u32, f32)> {
    let mut v: Vec<(u32, f32)> = r.results[i]
        .classes
        .iter()
        .map(|c| (c.index, c.probability))
        .collect();
    v.sort_by_key(|c| c.0);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_get_their_own_answers() {
    if !common::assets("concurrent_requests_get_their_own_answers", &[SMALL]) {
        return;
    }
    let server = TestServer::start(common::serve_args(&[SMALL], &["--max-batch-size", "8"])).await;
    let images = distinct_images(48);
    // One at a time: every batch holds one image.
    let mut client = server.client().await;
    let mut alone = Vec::new();
    for img in &images {
        alone.push(
            client
                .classify(req(SMALL, vec![img.clone()]))
                .await
                .unwrap()
                .into_inner(),
        );
    }
    let tops: std::collections::BTreeSet<u32> = alone
        .iter()
        .map(|r| r.results[0].classes[0].index)
        .collect();
    assert!(
        tops.len() >= 3,
        "the images are told apart ({tops:?}), so a mix-up would show"
    );
    // All at once over several connections, mixing single- and multi-image requests.
    let mut calls = Vec::new();
    for round in 0..2 {
        for (i, img) in images.iter().enumerate() {
            let mut c = if i % 3 == 0 {
                server.client().await
            } else {
                client.clone()
            };
            let img = img.clone();
            let other = images[(i + 7) % images.len()].clone();
            calls.push(tokio::spawn(async move {
                let r = if (i + round) % 2 == 0 {
                    c.classify(req(SMALL, vec![img])).await
                } else {
                    c.classify(req(SMALL, vec![other, img])).await
                };
                (i, round, r.map(|r| r.into_inner()))
            }));
        }
    }
    for done in join_all(calls).await {
        let (i, round, r) = done.unwrap();
        let r = r.unwrap_or_else(|e| panic!("image {i}: {e}"));
        let last = r.results.len() - 1;
        let want = probs(&alone[i], 0);
        let got = probs(&r, last);
        for ((wi, wp), (gi, gp)) in want.iter().zip(&got) {
            assert_eq!(wi, gi, "image {i} round {round}: classes differ");
            assert!(
                (wp - gp).abs() <= 1e-5,
                "image {i} round {round}: {wp} vs {gp}"
            );
        }
        if last == 1 {
            let j = (i + 7) % images.len();
            assert_eq!(
                probs(&r, 0).iter().map(|c| c.0).collect::<Vec<_>>(),
                probs(&alone[j], 0).iter().map(|c| c.0).collect::<Vec<_>>()
            );
        }
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_images_never_fail_their_batch_neighbours() {
    if !common::assets("bad_images_never_fail_their_batch_neighbours", &[SMALL]) {
        return;
    }
    let server = TestServer::start(common::serve_args(&[SMALL], &["--max-batch-size", "16"])).await;
    let good = distinct_images(4);
    let mut client = server.client().await;
    let expected: Vec<u32> = {
        let mut v = Vec::new();
        for g in &good {
            v.push(
                client
                    .classify(req(SMALL, vec![g.clone()]))
                    .await
                    .unwrap()
                    .into_inner()
                    .results[0]
                    .classes[0]
                    .index,
            );
        }
        v
    };
    let mut calls = Vec::new();
    for k in 0..40 {
        let mut c = client.clone();
        let good = good.clone();
        calls.push(tokio::spawn(async move {
            let r = match k % 4 {
                0 => c.classify(req(SMALL, vec![b"not an image".to_vec()])).await,
                1 => {
                    c.classify(req(SMALL, vec![good[k % 4][..100].to_vec()]))
                        .await
                }
                _ => c.classify(req(SMALL, vec![good[k % 4].clone()])).await,
            };
            (k, r)
        }));
    }
    for done in join_all(calls).await {
        let (k, r) = done.unwrap();
        match k % 4 {
            0 | 1 => assert_eq!(r.unwrap_err().code(), Code::InvalidArgument, "request {k}"),
            _ => assert_eq!(
                r.unwrap().into_inner().results[0].classes[0].index,
                expected[k % 4],
                "request {k}"
            ),
        }
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_queue_rejects_and_deadlines_fire_while_waiting() {
    if !common::assets(
        "full_queue_rejects_and_deadlines_fire_while_waiting",
        &[M50],
    ) {
        return;
    }
    const NAME: &str = "m50_queue";
    let repo = common::alias_repo(&[(NAME, M50)]);
    // One instance, batches of one, room for four waiting images.
    let args = common::serve_args_in(
        repo.path(),
        &[NAME],
        &["--max-batch-size", "1", "--queue-capacity", "4"],
    );
    let server = TestServer::start_with(args, true).await;
    let metrics = server.metrics_addr.unwrap();
    let depth = |d: f64| common::wait_metric(metrics, "wrn_queue_depth", &[("model", NAME)], d);
    let client = server.client().await;
    // Four images: the instance takes one, three wait; one more fills the queue.
    let mut c1 = client.clone();
    let busy =
        tokio::spawn(async move { c1.classify(common::zero_tensor_request(NAME, 4, 224)).await });
    depth(3.0).await;
    let mut c2 = client.clone();
    let filler =
        tokio::spawn(async move { c2.classify(common::zero_tensor_request(NAME, 1, 224)).await });
    depth(4.0).await;
    let mut c2 = client.clone();
    let e = c2
        .classify(common::zero_tensor_request(NAME, 1, 224))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
    assert!(e.message().contains("queue is full"), "{}", e.message());
    let too_many = c2
        .classify(common::zero_tensor_request(NAME, 5, 224))
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), Code::ResourceExhausted);
    assert!(
        too_many.message().contains("at most 4"),
        "{}",
        too_many.message()
    );
    // Accepted work completes.
    assert_eq!(busy.await.unwrap().unwrap().into_inner().results.len(), 4);
    assert_eq!(filler.await.unwrap().unwrap().into_inner().results.len(), 1);
    depth(0.0).await;
    // A deadline that passes while the request waits behind busy work fires on its timer.
    let mut c3 = client.clone();
    let busy =
        tokio::spawn(async move { c3.classify(common::zero_tensor_request(NAME, 3, 224)).await });
    depth(2.0).await;
    // The grpc-timeout header (tonic's Channel arms its own timer from it too);
    // a small PNG so the body is read long before the deadline.
    let small = {
        let img = DynamicImage::ImageRgb8(RgbImage::from_fn(64, 48, |x, y| {
            image::Rgb([x as u8 * 4, y as u8 * 5, 90])
        }));
        let mut buf = Cursor::new(Vec::new());
        img.write_to(&mut buf, ImageFormat::Png).unwrap();
        buf.into_inner()
    };
    let mut r = Request::new(req(NAME, vec![small]));
    r.metadata_mut()
        .insert("grpc-timeout", "200m".parse().unwrap());
    let e = c2.classify(r).await.unwrap_err();
    // tonic's client also arms a timer from the grpc-timeout header and reports CANCELLED
    // when it wins the race against the server's answer; the server side is checked below.
    assert!(
        matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{e}"
    );
    assert!(
        !busy.is_finished(),
        "the deadline fired while the model was still busy, not when the next batch formed"
    );
    busy.await.unwrap().unwrap();
    let text = common::scrape(metrics).await;
    // Either the server's deadline fired first (DEADLINE_EXCEEDED) or the client's own timer
    // did and it cancelled the call; the batcher unit tests pin the server's timer exactly.
    let deadline = common::sample(
        &text,
        "wrn_failures_total",
        &[("model", NAME), ("reason", "deadline")],
    );
    let cancelled = common::sample(
        &text,
        "wrn_failures_total",
        &[("model", NAME), ("reason", "cancelled")],
    );
    assert_eq!(
        deadline.unwrap_or(0.0) + cancelled.unwrap_or(0.0),
        1.0,
        "{text}"
    );
    assert_eq!(
        common::sample(
            &text,
            "wrn_failures_total",
            &[("model", NAME), ("reason", "queue_full")]
        ),
        Some(1.0)
    );
    assert_eq!(
        common::sample(&text, "wrn_batch_size_count", &[("model", NAME)]),
        Some(5.0 + 3.0),
        "8 images ran in batches of one (warm-up is not counted); the expired image never did"
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_drains_in_flight_work_and_refuses_new_calls() {
    if !common::assets(
        "shutdown_drains_in_flight_work_and_refuses_new_calls",
        &[M50],
    ) {
        return;
    }
    let mut server = TestServer::start(common::serve_args(
        &[M50],
        &["--max-batch-size", "4", "--drain-timeout-secs", "60"],
    ))
    .await;
    let img = common::read(common::photos_dir().join("motorcycle.png"));
    let mut watch = HealthClient::new(server.channel().await);
    let mut updates = watch
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        updates.message().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );
    let mut c = server.client().await;
    let work = img.clone();
    let in_flight = tokio::spawn(async move { c.classify(req(M50, vec![work; 6])).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.trigger_shutdown();
    // Health flips to NOT_SERVING for watchers.
    let next = tokio::time::timeout(Duration::from_secs(10), updates.message())
        .await
        .expect("a health update")
        .unwrap()
        .unwrap();
    assert_eq!(next.status(), ServingStatus::NotServing);
    drop(updates);
    // New calls are refused while the in-flight request still runs.
    let fresh = tonic::transport::Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await;
    if let Ok(ch) = fresh {
        let mut c = wrn::pb::classifier_client::ClassifierClient::new(ch);
        let e = c.classify(req(M50, vec![img.clone()])).await.unwrap_err();
        assert!(
            matches!(
                e.code(),
                Code::Unavailable | Code::Cancelled | Code::Unknown
            ),
            "{e}"
        );
    }
    // The in-flight request completes with all six answers, then the server exits cleanly.
    let r = in_flight
        .await
        .unwrap()
        .expect("in-flight work finishes during the drain")
        .into_inner();
    assert_eq!(r.results.len(), 6);
    let task = server.task.take().unwrap();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("server exits after draining")
        .unwrap()
        .unwrap();
}

#[test]
fn sigterm_exits_zero() {
    if !common::assets("sigterm_exits_zero", &[SMALL]) {
        return;
    }
    let exe = env!("CARGO_BIN_EXE_wrn");
    let mut child = std::process::Command::new(exe)
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
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until it reports SERVING in its log, then send SIGTERM.
    use std::io::{BufRead, BufReader};
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    loop {
        match lines.next() {
            Some(Ok(l)) => {
                let ready = l.contains("SERVING");
                seen.push(l);
                if ready {
                    break;
                }
            }
            _ => panic!("server ended before SERVING: {seen:?}"),
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let st = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
}
