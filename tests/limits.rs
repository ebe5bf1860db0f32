//! Every request limit of `wrn serve` (cli::LimitArgs), set small, against a real server:
//! the documented gRPC status, a message that names the value and the limit, the request
//! just inside the limit still served, and the server still serving afterwards.
//!
//! Status codes follow gRPC's status-code table: a request above a configured size limit is
//! RESOURCE_EXHAUSTED (gRPC itself uses it for "message larger than max"), a request whose
//! deadline passes is DEADLINE_EXCEEDED.

mod common;

use std::{
    alloc::{GlobalAlloc, Layout, System},
    io::Cursor,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use image::{DynamicImage, ImageFormat, RgbImage};
use tonic::{Code, Request, Status, transport::Channel};
use wrn::pb::{
    ClassifyRequest, ClassifyResponse, DataType, Tensor, classifier_client::ClassifierClient,
};

use common::TestServer;

const MODEL: &str = "wrn_16_4";

/// Counts live heap bytes and their high-water mark, so a test can show that a
/// decompression bomb is refused without the allocation its header asks for.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    // Forwarded too, so a huge zeroed allocation stays lazily mapped (calloc) instead of
    // being written to by the default implementation.
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 7) as u8, (y * 5) as u8, ((x + y) * 3) as u8])
    }));
    let mut buf = Cursor::new(Vec::new());
    img.write_to(&mut buf, ImageFormat::Png).unwrap();
    buf.into_inner()
}

/// A PNG whose IHDR declares `w` x `h` 8-bit RGB (valid CRCs) with a tiny IDAT: the
/// classic decompression bomb header.
fn bomb_png(w: u32, h: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = 0xFFFF_FFFFu32;
        for &b in bytes {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    // zlib stream of 16 zero bytes (stored block).
    let mut idat = vec![0x78, 0x01, 0x01, 16, 0, !16u8, 0xFF];
    idat.extend_from_slice(&[0; 16]);
    idat.extend_from_slice(&[0x00, 0x10, 0x00, 0x01]); // adler32 of 16 zeros
    chunk(&mut out, b"IDAT", &idat);
    chunk(&mut out, b"IEND", &[]);
    out
}

fn req(images: Vec<Vec<u8>>) -> ClassifyRequest {
    ClassifyRequest {
        model: MODEL.into(),
        top_k: 1,
        images,
        tensor: None,
    }
}

async fn classify(
    client: &mut ClassifierClient<Channel>,
    r: impl tonic::IntoRequest<ClassifyRequest>,
) -> Result<ClassifyResponse, Status> {
    client.classify(r).await.map(tonic::Response::into_inner)
}

fn assert_status(s: &Status, code: Code, contains: &[&str]) {
    assert_eq!(s.code(), code, "{s:?}");
    for c in contains {
        assert!(
            s.message().contains(c),
            "message {:?} does not mention {c:?}",
            s.message()
        );
    }
}

async fn start(test: &str, extra: &[&str]) -> Option<(TestServer, ClassifierClient<Channel>)> {
    if !common::assets(test, &[MODEL]) {
        return None;
    }
    let server = TestServer::start(common::serve_args(&[MODEL], extra)).await;
    let client = server.client().await;
    Some((server, client))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_message_bytes() {
    let Some((server, mut client)) =
        start("max_message_bytes", &["--max-message-bytes", "65536"]).await
    else {
        return;
    };
    let small = png(40, 30);
    assert!(small.len() < 60_000);
    classify(&mut client, req(vec![small.clone()]))
        .await
        .expect("a message under the limit is served");

    let big = png(400, 300);
    assert!(big.len() > 70_000, "{} bytes", big.len());
    let s = classify(&mut client, req(vec![big])).await.unwrap_err();
    // tonic refuses an oversized message itself, before the service sees it, with
    // OUT_OF_RANGE; gRPC's status-code table (and grpc-core, grpc-go, grpc-java) use
    // RESOURCE_EXHAUSTED for it. Either is accepted here; the message must give the limit.
    println!("over --max-message-bytes: {:?} {:?}", s.code(), s.message());
    assert!(
        matches!(s.code(), Code::ResourceExhausted | Code::OutOfRange),
        "{s:?}"
    );
    assert!(
        s.message().contains("65536"),
        "message names the limit: {s:?}"
    );
    // The connection and the server survive it.
    classify(&mut client, req(vec![small]))
        .await
        .expect("served after an oversized message");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_images_per_request() {
    let Some((server, mut client)) =
        start("max_images_per_request", &["--max-images-per-request", "2"]).await
    else {
        return;
    };
    let img = png(40, 30);
    let r = classify(&mut client, req(vec![img.clone(); 2]))
        .await
        .expect("2 images are accepted");
    assert_eq!(r.results.len(), 2);
    let s = classify(&mut client, req(vec![img.clone(); 3]))
        .await
        .unwrap_err();
    assert_status(&s, Code::ResourceExhausted, &["3 images", "at most 2"]);

    // The same limit holds for a preprocessed tensor.
    let tensor = |n: i64| ClassifyRequest {
        model: MODEL.into(),
        top_k: 1,
        images: vec![],
        tensor: Some(Tensor {
            dtype: DataType::Float32 as i32,
            shape: vec![n, 3, 32, 32],
            raw_data: vec![0; n as usize * 3 * 32 * 32 * 4],
            float_data: vec![],
        }),
    };
    classify(&mut client, tensor(2))
        .await
        .expect("a 2-image tensor is accepted");
    let s = classify(&mut client, tensor(3)).await.unwrap_err();
    assert_status(&s, Code::ResourceExhausted, &["3 images", "at most 2"]);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_image_bytes() {
    let small = png(8, 8);
    let limit = small.len().to_string();
    let Some((server, mut client)) = start("max_image_bytes", &["--max-image-bytes", &limit]).await
    else {
        return;
    };
    classify(&mut client, req(vec![small.clone()]))
        .await
        .expect("an image of exactly the limit is accepted");
    let big = png(9, 8);
    assert!(big.len() > small.len());
    let s = classify(&mut client, req(vec![small, big.clone()]))
        .await
        .unwrap_err();
    let want = format!("image 1 is {} bytes", big.len());
    assert_status(
        &s,
        Code::ResourceExhausted,
        &[&want, &format!("at most {limit} bytes")],
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_image_pixels() {
    let Some((server, mut client)) =
        start("max_image_pixels", &["--max-image-pixels", "10000"]).await
    else {
        return;
    };
    classify(&mut client, req(vec![png(100, 100)]))
        .await
        .expect("10000 pixels are accepted");
    classify(&mut client, req(vec![png(1, 10000)]))
        .await
        .expect("1x10000 is accepted");
    let s = classify(&mut client, req(vec![png(101, 100)]))
        .await
        .unwrap_err();
    assert_status(
        &s,
        Code::ResourceExhausted,
        &["101x100", "10100 pixels", "above the limit of 10000"],
    );
    server.stop().await.unwrap();
}

/// A header declaring 3.6 gigapixels (10.8 GB of RGB) is refused from the header: the
/// server's heap never grows by more than a small fraction of that while it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decompression_bomb_is_refused_from_the_header() {
    let Some((server, mut client)) =
        start("decompression_bomb_is_refused_from_the_header", &[]).await
    else {
        return;
    };
    let mut codes = Vec::new();
    for (w, h) in [(60_000, 60_000), (40_001, 1_000), (65_535, 65_535)] {
        let bomb = bomb_png(w, h);
        let before = LIVE.load(Ordering::Relaxed);
        PEAK.store(before, Ordering::Relaxed);
        let s = classify(&mut client, req(vec![bomb])).await.unwrap_err();
        let grew = PEAK.load(Ordering::Relaxed).saturating_sub(before);
        println!(
            "{w}x{h}: {:?} {:?}; heap peak grew {grew} bytes",
            s.code(),
            s.message()
        );
        // The decoded image would be w*h*3 bytes (>= 120 MB); other tests in this process
        // allocate a few MB at most.
        assert!(
            grew < 64 << 20,
            "{w}x{h}: heap grew by {grew} bytes while refusing it"
        );
        let pixels = (u64::from(w) * u64::from(h)).to_string();
        for c in [
            format!("{w}x{h}"),
            pixels,
            "above the limit of 40000000".into(),
        ] {
            assert!(
                s.message().contains(&c),
                "{w}x{h}: message {:?} does not mention {c:?}",
                s.message()
            );
        }
        codes.push((w, h, s.code()));
    }
    assert!(
        codes.iter().all(|c| c.2 == Code::ResourceExhausted),
        "pixel-limit refusals must be RESOURCE_EXHAUSTED like the other size limits: {codes:?}"
    );
    server.stop().await.unwrap();
}

/// A small lossless WebP (VP8X + VP8L) followed by an EXIF chunk whose header declares
/// `exif_size` bytes while the file holds only a few: the fuzzer's finding
/// (tests/python/make_corpus.py, webp_exif_chunk_bomb.webp).
fn webp_with_exif_size(exif_size: u32) -> Vec<u8> {
    let (w, h) = (21u32, 32u32);
    let img = DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 9) as u8, (y * 7) as u8, 50])
    }));
    let mut buf = Cursor::new(Vec::new());
    img.write_to(&mut buf, ImageFormat::WebP).unwrap();
    let simple = buf.into_inner();
    assert_eq!(&simple[12..16], b"VP8L", "image writes lossless WebP");
    let vp8l = &simple[12..]; // the VP8L chunk, header included
    let mut body = b"WEBP".to_vec();
    body.extend_from_slice(b"VP8X");
    body.extend_from_slice(&10u32.to_le_bytes());
    body.extend_from_slice(&[0x08, 0, 0, 0]); // flags: EXIF present
    body.extend_from_slice(&(w - 1).to_le_bytes()[..3]);
    body.extend_from_slice(&(h - 1).to_le_bytes()[..3]);
    body.extend_from_slice(vp8l);
    body.extend_from_slice(b"EXIF");
    body.extend_from_slice(&exif_size.to_le_bytes());
    body.extend_from_slice(b"Exif\0\0II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0\x01\0");
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// A WebP metadata chunk declaring gigabytes is refused as a broken file, and refusing it
/// does not allocate what it declares (image-webp used to allocate the declared size before
/// reading, and image's WebP decoder gives it no memory limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webp_metadata_chunk_bomb_is_refused_without_allocating() {
    let Some((server, mut client)) = start(
        "webp_metadata_chunk_bomb_is_refused_without_allocating",
        &[],
    )
    .await
    else {
        return;
    };
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let result = classify(&mut client, req(vec![webp_with_exif_size(3_821_477_827)])).await;
    let grew = PEAK.load(Ordering::Relaxed).saturating_sub(before);
    println!("webp EXIF chunk of 3.8 GB: {result:?}; heap peak grew {grew} bytes");
    assert!(
        grew < 64 << 20,
        "heap grew by {grew} bytes for a ~1 KB WebP"
    );
    let s = result.expect_err("a WebP whose EXIF chunk runs past the end of the file is broken");
    assert_status(&s, Code::InvalidArgument, &["WebP"]);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_secs() {
    let Some((server, mut client)) =
        start("request_timeout_secs", &["--request-timeout-secs", "0.001"]).await
    else {
        return;
    };
    // Eight 640x480 PNGs take far longer than 1 ms to decode on any machine.
    let imgs = vec![png(640, 480); 8];
    let s = classify(&mut client, req(imgs)).await.unwrap_err();
    assert_status(&s, Code::DeadlineExceeded, &["deadline exceeded"]);
    server.stop().await.unwrap();
}

/// True when the status is tonic's own answer to a passed `grpc-timeout`: CANCELLED
/// "Timeout expired". tonic arms a timer from that header on both sides, in the client's
/// `Channel` (the status then has a `TimeoutExpired` source) and in the server's transport
/// (a status sent by the server, e.g. while the body is still being read); either can fire
/// before the service answers DEADLINE_EXCEEDED. Other gRPC stacks say DEADLINE_EXCEEDED.
fn is_tonic_timeout(s: &Status) -> bool {
    if s.code() != Code::Cancelled {
        return false;
    }
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        if e.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = e.source();
    }
    s.message() == "Timeout expired"
}

/// A passed client deadline ends the call as a deadline, never as another error. With both
/// a client deadline and the server's own timeout, the shorter wins: a server timeout well
/// inside the client's gives the server's DEADLINE_EXCEEDED (the client timer cannot race it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_deadline_is_a_deadline() {
    let Some((server, mut client)) = start(
        "client_deadline_is_a_deadline",
        &["--request-timeout-secs", "0.05"],
    )
    .await
    else {
        return;
    };
    // Client 10 s, server 50 ms: the server's answer, 9.95 s before the client's timer.
    let mut r = Request::new(req(vec![png(640, 480); 64]));
    r.set_timeout(Duration::from_secs(10));
    let s = classify(&mut client, r).await.unwrap_err();
    assert_status(&s, Code::DeadlineExceeded, &["deadline exceeded"]);
    assert!(
        s.metadata().get("x-request-id").is_some(),
        "the server's own answer: {s:?}"
    );
    // 1 ms cannot be met at all; 20 ms cannot be met by 32 640x480 PNGs in a test build.
    for (ms, n) in [(1, 8), (20, 32)] {
        let mut r = Request::new(req(vec![png(640, 480); n]));
        r.set_timeout(Duration::from_millis(ms));
        let s = classify(&mut client, r).await.unwrap_err();
        println!(
            "client deadline {ms} ms: {:?} {:?} (tonic's timer: {})",
            s.code(),
            s.message(),
            is_tonic_timeout(&s)
        );
        assert!(
            s.code() == Code::DeadlineExceeded || is_tonic_timeout(&s),
            "client deadline {ms} ms: {s:?}"
        );
    }
    server.stop().await.unwrap();
}

/// Requests that time out leave no work behind: their images still waiting to be decoded
/// are dropped, so a small request right after a burst of timed-out ones is served within
/// the same timeout. (Without that, every decode of an abandoned request still runs and
/// holds a preprocessing slot, and the next requests time out behind them: overload
/// cascades.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_out_requests_leave_no_work_behind() {
    let Some((server, client)) = start(
        "timed_out_requests_leave_no_work_behind",
        &["--request-timeout-secs", "1"],
    )
    .await
    else {
        return;
    };
    // 6 x 32 images of 1024x768: seconds of decoding on 2 cores in a test build, far more
    // than the 1 s timeout; at most the few decodes already running may outlive it.
    let big = png(1024, 768);
    let mut burst = Vec::new();
    for _ in 0..6 {
        let mut c = client.clone();
        let r = req(vec![big.clone(); 32]);
        burst.push(tokio::spawn(async move { classify(&mut c, r).await }));
    }
    let mut timed_out = 0;
    for b in burst {
        match b.await.unwrap() {
            Err(s) if s.code() == Code::DeadlineExceeded => timed_out += 1,
            Err(s) => panic!("burst request: {s:?}"),
            Ok(_) => {}
        }
    }
    println!("burst: {timed_out} of 6 requests timed out");
    assert!(
        timed_out > 0,
        "the burst must overrun the 1 s timeout for this test to mean anything"
    );
    let mut c = client.clone();
    let after = classify(&mut c, req(vec![png(40, 30)])).await;
    assert!(
        after.is_ok(),
        "a small request after the timed-out burst was not served within 1 s: {after:?}"
    );
    server.stop().await.unwrap();
}
