//! `wrn bench`: a closed-loop gRPC load generator. Each of C clients sends one request,
//! waits for the answer, and sends the next, for a fixed time per concurrency level. It
//! reports throughput, latency percentiles, errors by status code and the server's batch
//! size distribution (read from its /metrics), as a table and as JSON.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;
use tonic::{Request, metadata::MetadataValue};

use crate::{client::connect, metrics::code_name, pb};

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub addr: String,
    /// Model name; empty means the default model.
    #[arg(long, default_value = "")]
    pub model: String,
    /// Concurrency levels (closed-loop clients), comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    pub concurrency: Vec<usize>,
    /// Seconds measured per concurrency level.
    #[arg(long, default_value_t = 20.0)]
    pub duration_secs: f64,
    /// Seconds of unmeasured load before each level.
    #[arg(long, default_value_t = 2.0)]
    pub warmup_secs: f64,
    /// Image files or folders of images sent round-robin.
    #[arg(long, required = true, num_args = 1.., value_delimiter = ',')]
    pub images: Vec<PathBuf>,
    /// Images per request.
    #[arg(long, default_value_t = 1)]
    pub images_per_request: usize,
    /// Server metrics URL for the batch size distribution (http://HOST:PORT/metrics).
    #[arg(long)]
    pub metrics_url: Option<String>,
    /// gRPC connections shared by the clients.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Per-request deadline in seconds.
    #[arg(long, default_value_t = 60.0)]
    pub timeout_secs: f64,
    /// Bearer token when the server requires one.
    #[arg(long, env = "WRN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Write the results as JSON to this file as well.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Results of one concurrency level.
#[derive(Debug, Clone, Serialize)]
pub struct LevelResult {
    pub concurrency: usize,
    pub seconds: f64,
    pub requests_ok: u64,
    pub images_ok: u64,
    pub throughput_img_s: f64,
    pub latency_ms: Percentiles,
    pub errors: BTreeMap<String, u64>,
    /// Server-side batch sizes during the level: bucket upper bound -> batches.
    pub batch_sizes: BTreeMap<String, f64>,
    pub mean_batch_size: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// Percentiles of a sample (nearest-rank), in the sample's unit.
pub fn percentiles(samples: &mut [f64]) -> Percentiles {
    if samples.is_empty() {
        return Percentiles::default();
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
        samples[rank - 1]
    };
    Percentiles {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        max: samples[samples.len() - 1],
        mean: samples.iter().sum::<f64>() / samples.len() as f64,
    }
}

fn load_images(paths: &[PathBuf]) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)?
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_file() && is_image_name(p))
                .collect();
            entries.sort();
            files.extend(entries);
        } else {
            files.push(p.clone());
        }
    }
    if files.is_empty() {
        bail!("no image files given");
    }
    files
        .iter()
        .map(|f| std::fs::read(f).with_context(|| format!("cannot read {}", f.display())))
        .collect()
}

/// Image files by extension (folders given to --images may hold other files).
fn is_image_name(p: &std::path::Path) -> bool {
    let ext = p
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    matches!(
        ext.as_deref(),
        Some("jpg" | "jpeg" | "png" | "webp" | "bmp" | "gif" | "tif" | "tiff")
    )
}

/// Scrapes `wrn_batch_size` buckets (cumulative) for one model, or all models.
pub async fn scrape_batch_sizes(url: &str, model: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let text = http_get(url).await?;
    Ok(parse_histogram(&text, "wrn_batch_size", model))
}

/// Sums a histogram's `_bucket`, `_sum` and `_count` series (optionally for one model)
/// from Prometheus text: keys are `le` values plus "sum" and "count".
pub fn parse_histogram(text: &str, name: &str, model: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let model_label = format!("model=\"{model}\"");
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        if !model.is_empty() && !series.contains(&model_label) {
            continue;
        }
        let key = if series.starts_with(&format!("{name}_bucket{{")) {
            match series
                .split("le=\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
            {
                Some(le) => le.to_string(),
                None => continue,
            }
        } else if series.starts_with(&format!("{name}_sum")) {
            "sum".into()
        } else if series.starts_with(&format!("{name}_count")) {
            "count".into()
        } else {
            continue;
        };
        *out.entry(key).or_insert(0.0) += v;
    }
    out
}

/// A minimal HTTP/1.1 GET for the metrics endpoint (plain http only).
pub async fn http_get(url: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url
        .strip_prefix("http://")
        .context("metrics URL must start with http://")?;
    let (hostport, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let mut sock = tokio::net::TcpStream::connect(hostport)
        .await
        .with_context(|| format!("cannot connect to {hostport}"))?;
    sock.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    sock.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {url}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_string())
}

fn diff(after: &BTreeMap<String, f64>, before: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .collect()
}

async fn run_level(
    args: &BenchArgs,
    images: &Arc<Vec<Vec<u8>>>,
    concurrency: usize,
) -> anyhow::Result<LevelResult> {
    let mut clients = Vec::new();
    for _ in 0..args.connections.max(1).min(concurrency) {
        clients.push(connect(&args.addr).await?);
    }
    let warm_end = Instant::now() + Duration::from_secs_f64(args.warmup_secs);
    let mut tasks = Vec::new();
    let measure_for = Duration::from_secs_f64(args.duration_secs);
    for c in 0..concurrency {
        let mut client = clients[c % clients.len()].clone();
        let images = images.clone();
        let args = args.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            let mut ok_images = 0u64;
            let mut i = c * 7;
            let end = warm_end + measure_for;
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                let batch: Vec<Vec<u8>> = (0..args.images_per_request)
                    .map(|j| images[(i + j) % images.len()].clone())
                    .collect();
                i += args.images_per_request;
                let mut req = Request::new(pb::ClassifyRequest {
                    model: args.model.clone(),
                    top_k: 5,
                    images: batch,
                    tensor: None,
                });
                req.set_timeout(Duration::from_secs_f64(args.timeout_secs));
                if let Some(t) = &args.token
                    && let Ok(v) = format!("Bearer {t}").parse::<MetadataValue<_>>()
                {
                    req.metadata_mut().insert("authorization", v);
                }
                let sent = Instant::now();
                // Calls still running when the window closes are abandoned, not counted.
                let res = tokio::select! {
                    r = client.classify(req) => r,
                    _ = tokio::time::sleep_until(end.into()) => break,
                };
                let done = Instant::now();
                // Count what completes inside the measured window (by completion time), so
                // throughput = completions / window at any concurrency.
                if done < warm_end || done > end {
                    continue;
                }
                match res {
                    Ok(_) => {
                        lat.push(done.duration_since(sent).as_secs_f64() * 1000.0);
                        ok_images += args.images_per_request as u64;
                    }
                    Err(s) => {
                        // tonic reports a deadline its own timer caught as CANCELLED.
                        let code = if s.code() == tonic::Code::Cancelled
                            && s.message().contains("Timeout expired")
                        {
                            "DEADLINE_EXCEEDED"
                        } else {
                            code_name(s.code())
                        };
                        *errors.entry(code.to_string()).or_default() += 1
                    }
                }
            }
            (lat, errors, ok_images)
        }));
    }
    // Snapshot the server's batch sizes when the measured window starts.
    tokio::time::sleep_until(warm_end.into()).await;
    let metrics_before = match &args.metrics_url {
        Some(url) => scrape_batch_sizes(url, &args.model).await.ok(),
        None => None,
    };
    let mut lat = Vec::new();
    let mut errors = BTreeMap::new();
    let mut images_ok = 0;
    for t in tasks {
        let (l, e, n) = t.await?;
        lat.extend(l);
        for (k, v) in e {
            *errors.entry(k).or_default() += v;
        }
        images_ok += n;
    }
    let seconds = measure_for.as_secs_f64();
    let (batch_sizes, mean_batch_size) = match (&args.metrics_url, metrics_before) {
        (Some(url), Some(before)) => {
            let after = scrape_batch_sizes(url, &args.model).await?;
            let d = diff(&after, &before);
            let mean = match (d.get("sum"), d.get("count")) {
                (Some(s), Some(c)) if *c > 0.0 => Some(s / c),
                _ => None,
            };
            (d, mean)
        }
        _ => (BTreeMap::new(), None),
    };
    let requests_ok = lat.len() as u64;
    Ok(LevelResult {
        concurrency,
        seconds,
        requests_ok,
        images_ok,
        throughput_img_s: images_ok as f64 / seconds,
        latency_ms: percentiles(&mut lat),
        errors,
        batch_sizes,
        mean_batch_size,
    })
}

/// Formats results as a table.
pub fn table(results: &[LevelResult]) -> String {
    let mut s = format!(
        "{:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>8}  errors\n",
        "conc", "img/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "requests", "batch"
    );
    for r in results {
        let errs: Vec<String> = r.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
        s.push_str(&format!(
            "{:>5} {:>9.2} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>10} {:>8}  {}\n",
            r.concurrency,
            r.throughput_img_s,
            r.latency_ms.p50,
            r.latency_ms.p90,
            r.latency_ms.p99,
            r.latency_ms.max,
            r.requests_ok,
            r.mean_batch_size
                .map_or("-".to_string(), |m| format!("{m:.2}")),
            if errs.is_empty() {
                "-".to_string()
            } else {
                errs.join(" ")
            }
        ));
    }
    s
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.images_per_request == 0 {
        bail!("--images-per-request must be at least 1");
    }
    let images = Arc::new(load_images(&args.images)?);
    let mut results = Vec::new();
    for &c in &args.concurrency {
        if c == 0 {
            bail!("concurrency levels must be positive");
        }
        let r = run_level(&args, &images, c).await?;
        eprintln!(
            "concurrency {c}: {:.2} img/s, p50 {:.1} ms, p99 {:.1} ms",
            r.throughput_img_s, r.latency_ms.p50, r.latency_ms.p99
        );
        results.push(r);
    }
    print!("{}", table(&results));
    let json = serde_json::to_string_pretty(&results)?;
    if let Some(path) = &args.json {
        std::fs::write(path, &json).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = percentiles(&mut v);
        assert_eq!((p.p50, p.p90, p.p99, p.max), (50.0, 90.0, 99.0, 100.0));
        assert_eq!(percentiles(&mut []).max, 0.0);
    }

    #[test]
    fn histogram_parsing_filters_by_model() {
        let text = "# TYPE wrn_batch_size histogram\n\
            wrn_batch_size_bucket{model=\"a\",version=\"1\",le=\"1\"} 3\n\
            wrn_batch_size_bucket{model=\"a\",version=\"1\",le=\"+Inf\"} 5\n\
            wrn_batch_size_sum{model=\"a\",version=\"1\"} 12\n\
            wrn_batch_size_count{model=\"a\",version=\"1\"} 5\n\
            wrn_batch_size_count{model=\"b\",version=\"1\"} 9\n";
        let h = parse_histogram(text, "wrn_batch_size", "a");
        assert_eq!(h["1"], 3.0);
        assert_eq!(h["+Inf"], 5.0);
        assert_eq!(h["count"], 5.0);
        assert_eq!(parse_histogram(text, "wrn_batch_size", "")["count"], 14.0);
    }
}
