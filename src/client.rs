//! `wrn classify`: send image files to a running server and print the top-k per file.

use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use tonic::{Request, metadata::MetadataValue, transport::Channel};

use crate::{
    cli::ClassifyArgs,
    pb::{self, classifier_client::ClassifierClient},
};

/// Turns `HOST:PORT` into a URL tonic accepts.
pub fn endpoint_url(addr: &str) -> String {
    if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

/// Connects a classifier client.
pub async fn connect(addr: &str) -> anyhow::Result<ClassifierClient<Channel>> {
    let url = endpoint_url(addr);
    let channel = Channel::from_shared(url.clone())
        .with_context(|| format!("bad server address {addr:?}"))?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    Ok(ClassifierClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(256 << 20))
}

#[derive(Debug, Serialize)]
struct FileResult {
    file: String,
    model: String,
    model_version: String,
    classes: Vec<ClassOut>,
}

#[derive(Debug, Serialize)]
struct ClassOut {
    index: u32,
    label: String,
    probability: f32,
}

pub async fn run(args: ClassifyArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.addr).await?;
    let mut images = Vec::with_capacity(args.files.len());
    for f in &args.files {
        images.push(std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?);
    }
    let groups: Vec<(Vec<usize>, Vec<Vec<u8>>)> = if args.one_per_request {
        images
            .into_iter()
            .enumerate()
            .map(|(i, img)| (vec![i], vec![img]))
            .collect()
    } else {
        vec![((0..args.files.len()).collect(), images)]
    };
    let mut out = Vec::new();
    for (idx, imgs) in groups {
        let mut req = Request::new(pb::ClassifyRequest {
            model: args.model.clone(),
            top_k: args.top_k,
            images: imgs,
            tensor: None,
        });
        req.set_timeout(Duration::from_secs_f64(args.timeout_secs));
        if let Some(t) = &args.token {
            let v: MetadataValue<_> = format!("Bearer {t}")
                .parse()
                .context("token is not valid header text")?;
            req.metadata_mut().insert("authorization", v);
        }
        let resp = client
            .classify(req)
            .await
            .map_err(|s| anyhow::anyhow!("server answered {:?}: {}", s.code(), s.message()))?
            .into_inner();
        for (i, r) in idx.into_iter().zip(resp.results) {
            out.push(FileResult {
                file: args.files[i].display().to_string(),
                model: resp.model.clone(),
                model_version: resp.model_version.clone(),
                classes: r
                    .classes
                    .into_iter()
                    .map(|c| ClassOut {
                        index: c.index,
                        label: c.label,
                        probability: c.probability,
                    })
                    .collect(),
            });
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for r in &out {
            println!("{}  (model {} v{})", r.file, r.model, r.model_version);
            println!(
                "  {:>4}  {:>6}  {:>11}  label",
                "rank", "class", "probability"
            );
            for (rank, c) in r.classes.iter().enumerate() {
                println!(
                    "  {:>4}  {:>6}  {:>11.6}  {}",
                    rank + 1,
                    c.index,
                    c.probability,
                    c.label
                );
            }
        }
    }
    Ok(())
}
