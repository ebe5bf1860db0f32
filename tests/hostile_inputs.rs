//! Odd and hostile images against a real server: every file of the generated corpus
//! (tests/python/make_corpus.py) gets exactly the outcome its manifest entry names, rotated
//! and losslessly recoloured copies answer like their reference, and bad requests never
//! harm good ones sent at the same time.
//!
//! The model is `wrn_16_4` (32x32 input): fast, and its calibrated random-weight outputs are
//! peaked enough that top-1 is a stable fingerprint of the input pixels.

mod common;

use std::{collections::BTreeMap, path::PathBuf};

use serde_json::Value;
use tonic::{Code, Status};
use wrn::pb::{
    ClassifyRequest, ClassifyResponse, DataType, Tensor, classifier_client::ClassifierClient,
};

use common::TestServer;

const MODEL: &str = "wrn_16_4";
const CROP: i64 = 32;

/// Identical decoded pixels give an identical input tensor; the answer may differ only by
/// float noise between runs of the same graph.
const SAME_PIXELS_PROB_TOL: f32 = 1e-4;

fn corpus_dir() -> PathBuf {
    common::generated().join("corpus")
}

fn corpus_assets(test: &str) -> bool {
    common::assets(test, &[MODEL]) && common::require(test, &[corpus_dir().join("manifest.json")])
}

#[derive(Debug, Clone)]
struct Entry {
    file: String,
    expect: String,
    same_top1_as: Option<String>,
    message_contains: Option<String>,
    lossy: bool,
    why: String,
}

fn manifest() -> Vec<Entry> {
    let m: Value =
        serde_json::from_slice(&common::read(corpus_dir().join("manifest.json"))).unwrap();
    m["entries"]
        .as_array()
        .expect("manifest.entries")
        .iter()
        .map(|e| Entry {
            file: e["file"].as_str().unwrap().to_string(),
            expect: e["expect"].as_str().unwrap().to_string(),
            same_top1_as: e["same_top1_as"].as_str().map(str::to_string),
            message_contains: e["message_contains"].as_str().map(str::to_string),
            lossy: e["lossy"].as_bool().unwrap_or(false),
            why: e["why"].as_str().unwrap_or_default().to_string(),
        })
        .collect()
}

fn bytes(file: &str) -> Vec<u8> {
    common::read(corpus_dir().join(file))
}

fn code_name(c: Code) -> String {
    // Code's Debug is CamelCase; the manifest uses the canonical SCREAMING_SNAKE names.
    let camel = format!("{c:?}");
    let mut out = String::new();
    for (i, ch) in camel.chars().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(ch.to_ascii_uppercase());
    }
    out
}

fn one(image: Vec<u8>) -> ClassifyRequest {
    ClassifyRequest {
        model: MODEL.into(),
        top_k: 3,
        images: vec![image],
        tensor: None,
    }
}

/// Top-1 (class, probability) of a one-image answer, checking the answer's shape.
fn top1(resp: &ClassifyResponse) -> Result<(u32, f32), String> {
    if resp.results.len() != 1 {
        return Err(format!("{} results for one image", resp.results.len()));
    }
    let classes = &resp.results[0].classes;
    if classes.len() != 3 {
        return Err(format!("{} classes for top_k 3", classes.len()));
    }
    if !classes
        .iter()
        .all(|c| c.probability.is_finite() && (0.0..=1.0).contains(&c.probability))
    {
        return Err(format!("probabilities out of [0, 1]: {classes:?}"));
    }
    if !classes
        .windows(2)
        .all(|w| w[0].probability >= w[1].probability)
    {
        return Err(format!("classes not sorted by probability: {classes:?}"));
    }
    Ok((classes[0].index, classes[0].probability))
}

/// Checks an error status: the right code, a non-empty message that names the problem.
fn check_status(s: &Status, want: &str, contains: Option<&str>) -> Result<(), String> {
    let got = code_name(s.code());
    if got != want {
        return Err(format!("got {got} ({:?}), want {want}", s.message()));
    }
    let msg = s.message();
    if msg.trim().is_empty() {
        return Err(format!("{got} with an empty message"));
    }
    if let Some(c) = contains
        && !msg.to_lowercase().contains(&c.to_lowercase())
    {
        return Err(format!("message {msg:?} does not mention {c:?}"));
    }
    Ok(())
}

async fn classify(
    client: &mut ClassifierClient<tonic::transport::Channel>,
    req: ClassifyRequest,
) -> Result<ClassifyResponse, Status> {
    client.classify(req).await.map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_corpus_file_gets_its_exact_outcome() {
    if !corpus_assets("every_corpus_file_gets_its_exact_outcome") {
        return;
    }
    let entries = manifest();
    assert!(
        entries.len() >= 40,
        "corpus has only {} files",
        entries.len()
    );
    let server = TestServer::start(common::serve_args(&[MODEL], &[])).await;
    let mut client = server.client().await;

    // One request per file, one at a time: every answer comes from a batch of one.
    let mut answers: BTreeMap<String, (u32, f32)> = BTreeMap::new();
    let mut failures = Vec::new();
    for e in &entries {
        let result = classify(&mut client, one(bytes(&e.file))).await;
        match (e.expect.as_str(), result) {
            ("ok", Ok(resp)) => match top1(&resp) {
                Ok(t) => {
                    println!(
                        "{:>24}: top-1 {} p={:.4}{}",
                        e.file,
                        t.0,
                        t.1,
                        if e.lossy { " (lossy)" } else { "" }
                    );
                    answers.insert(e.file.clone(), t);
                }
                Err(why) => failures.push(format!("{}: {why}", e.file)),
            },
            ("ok", Err(s)) => failures.push(format!(
                "{}: want OK, got {:?} {:?} ({})",
                e.file,
                s.code(),
                s.message(),
                e.why
            )),
            (want, Ok(resp)) => failures.push(format!(
                "{}: want {want}, got OK {:?} ({})",
                e.file,
                top1(&resp),
                e.why
            )),
            (want, Err(s)) => {
                println!("{:>24}: {:?} {:?}", e.file, s.code(), s.message());
                if let Err(why) = check_status(&s, want, e.message_contains.as_deref()) {
                    failures.push(format!("{}: {why} ({})", e.file, e.why));
                }
                // Per-image problems name the image so a batch caller knows which one.
                if want == "INVALID_ARGUMENT" && !s.message().starts_with("image 0:") {
                    failures.push(format!(
                        "{}: message {:?} does not start with \"image 0:\"",
                        e.file,
                        s.message()
                    ));
                }
            }
        }
    }

    // Identical decoded pixels: same top-1 and the same probability.
    for e in &entries {
        let (Some(reference), Some(got)) = (&e.same_top1_as, answers.get(&e.file)) else {
            continue;
        };
        let Some(want) = answers.get(reference) else {
            failures.push(format!("{}: reference {reference} has no answer", e.file));
            continue;
        };
        if got.0 != want.0 || (got.1 - want.1).abs() > SAME_PIXELS_PROB_TOL {
            failures.push(format!(
                "{}: top-1 {} p={:.5}, but {reference} (same pixels) gives {} p={:.5} ({})",
                e.file, got.0, got.1, want.0, want.1, e.why
            ));
        }
    }

    // Lossy re-encodings of the upright photo (JPEG at q85-q95 in every orientation, CMYK,
    // YCCK, lossy WebP: PIL measures a mean absolute pixel difference of 0.04-2.8 levels) keep
    // top-1: after resizing to 32x32 the differences average out far below the margin
    // between the first and second class.
    let upright = answers.get("upright.png").copied();
    for e in entries.iter().filter(|e| e.lossy) {
        if let (Some(u), Some(got)) = (upright, answers.get(&e.file))
            && got.0 != u.0
        {
            failures.push(format!(
                "{}: top-1 {} but upright.png gives {} ({})",
                e.file, got.0, u.0, e.why
            ));
        }
    }
    let ok = answers.len();
    server.stop().await.unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} corpus files failed:\n  {}",
        failures.len(),
        entries.len(),
        failures.join("\n  ")
    );
    println!(
        "corpus: {} files, {ok} classified, all outcomes as the manifest says",
        entries.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encoded_image_in_a_tensor_request_is_invalid_argument() {
    if !corpus_assets("an_encoded_image_in_a_tensor_request_is_invalid_argument") {
        return;
    }
    let server = TestServer::start(common::serve_args(&[MODEL], &[])).await;
    let mut client = server.client().await;
    let png = bytes("upright.png");
    let tensor = |dtype: DataType, raw: Vec<u8>| ClassifyRequest {
        model: MODEL.into(),
        top_k: 1,
        images: vec![],
        tensor: Some(Tensor {
            dtype: dtype as i32,
            shape: vec![1, 3, CROP, CROP],
            raw_data: raw,
            float_data: vec![],
        }),
    };
    let need = (3 * CROP * CROP * 4) as usize;

    // The whole PNG as raw_data: the length gives it away.
    let s = classify(&mut client, tensor(DataType::Float32, png.clone()))
        .await
        .unwrap_err();
    check_status(&s, "INVALID_ARGUMENT", Some("raw_data")).unwrap();
    assert!(
        s.message().contains(&need.to_string()),
        "names the needed size: {s:?}"
    );

    // The PNG cut to exactly the right length: its bytes read as floats include NaN or
    // infinity (checked here, so the case stays meaningful), which the server refuses.
    let cut = png[..need].to_vec();
    assert!(
        cut.chunks_exact(4)
            .any(|b| !f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite()),
        "precondition: the PNG prefix holds a non-finite float"
    );
    let s = classify(&mut client, tensor(DataType::Float32, cut.clone()))
        .await
        .unwrap_err();
    check_status(&s, "INVALID_ARGUMENT", Some("not finite")).unwrap();

    // No dtype: refused before the data is looked at.
    let s = classify(&mut client, tensor(DataType::Unspecified, cut))
        .await
        .unwrap_err();
    check_status(&s, "INVALID_ARGUMENT", Some("dtype")).unwrap();

    // An image and a tensor together.
    let mut both = tensor(DataType::Float32, vec![0; need]);
    both.images = vec![png];
    let s = classify(&mut client, both).await.unwrap_err();
    check_status(&s, "INVALID_ARGUMENT", Some("not both")).unwrap();
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_images_never_fail_a_good_neighbour() {
    if !corpus_assets("bad_images_never_fail_a_good_neighbour") {
        return;
    }
    let entries = manifest();
    let bad: Vec<Entry> = entries
        .iter()
        .filter(|e| e.expect != "ok")
        .cloned()
        .collect();
    assert!(bad.len() >= 8, "corpus has {} must-reject files", bad.len());
    let server = TestServer::start(common::serve_args(&[MODEL], &[])).await;
    let mut client = server.client().await;
    let good = bytes("upright.png");
    let want = top1(&classify(&mut client, one(good.clone())).await.unwrap()).unwrap();

    for round in 0..3 {
        // Every bad file and as many good requests, interleaved, all in flight at once,
        // each on its own clone of the channel (one HTTP/2 connection, many streams).
        let mut calls = Vec::new();
        for b in &bad {
            for (data, expect) in [(bytes(&b.file), Some(b.clone())), (good.clone(), None)] {
                let mut c = client.clone();
                calls.push(tokio::spawn(async move {
                    (expect, classify(&mut c, one(data)).await)
                }));
            }
        }
        // A request mixing good and bad images fails as a whole, naming the bad one.
        let mut c = client.clone();
        let mixed = ClassifyRequest {
            model: MODEL.into(),
            top_k: 3,
            images: vec![good.clone(), bytes("truncated.png"), good.clone()],
            tensor: None,
        };
        let mixed = tokio::spawn(async move { classify(&mut c, mixed).await });

        let mut good_ok = 0;
        for call in calls {
            let (expect, result) = call.await.unwrap();
            match expect {
                None => {
                    let resp = result.unwrap_or_else(|s| {
                        panic!("round {round}: a good request failed next to bad ones: {s:?}")
                    });
                    let got = top1(&resp).unwrap();
                    assert_eq!(
                        got.0, want.0,
                        "round {round}: good request answered differently"
                    );
                    assert!(
                        (got.1 - want.1).abs() <= SAME_PIXELS_PROB_TOL,
                        "round {round}: {got:?} vs {want:?}"
                    );
                    good_ok += 1;
                }
                Some(e) => {
                    // The exact code is every_corpus_file_gets_its_exact_outcome's business;
                    // here a bad image must just be refused as the client's fault.
                    let s = result.expect_err(&format!("round {round}: {} was accepted", e.file));
                    assert!(
                        matches!(s.code(), Code::InvalidArgument | Code::ResourceExhausted)
                            && !s.message().is_empty(),
                        "round {round}: {}: {s:?}",
                        e.file
                    );
                }
            }
        }
        let s = mixed.await.unwrap().unwrap_err();
        check_status(&s, "INVALID_ARGUMENT", Some("image 1:")).unwrap();
        assert_eq!(good_ok, bad.len());
    }
    // And the server still answers normally afterwards.
    let after = top1(&classify(&mut client, one(good)).await.unwrap()).unwrap();
    assert_eq!(after.0, want.0);
    server.stop().await.unwrap();
}
