//! Rust preprocessing against torchvision's evaluation transform on real photos
//! (references written by tests/python/preprocess_reference.py with PIL + torchvision).

mod common;

use serde_json::Value;
use wrn::{
    config::PreprocessConfig,
    preprocess::{DecodeLimits, Preprocessor},
};

#[test]
fn preprocessing_matches_torchvision_on_real_photos() {
    let dir = common::generated().join("preprocess");
    if !common::require(
        "preprocessing_matches_torchvision_on_real_photos",
        &[dir.join("manifest.json"), common::photos_dir()],
    ) {
        return;
    }
    let manifest: Value = serde_json::from_slice(&common::read(dir.join("manifest.json"))).unwrap();
    let variants = manifest["variants"].as_object().unwrap();
    let mut checked = 0;
    let mut worst_mean = 0f64;
    let mut worst_max = 0f64;
    let mut per_variant_photos = std::collections::BTreeMap::<String, usize>::new();
    for e in manifest["entries"].as_array().unwrap() {
        let variant = e["variant"].as_str().unwrap();
        let v = &variants[variant];
        let floats = |x: &Value| -> [f32; 3] {
            let a = x.as_array().unwrap();
            [
                a[0].as_f64().unwrap() as f32,
                a[1].as_f64().unwrap() as f32,
                a[2].as_f64().unwrap() as f32,
            ]
        };
        let cfg = PreprocessConfig {
            resize: v["resize"].as_u64().unwrap() as u32,
            crop: v["crop"].as_u64().unwrap() as u32,
            interpolation: "bilinear".into(),
            mean: floats(&v["mean"]),
            std: floats(&v["std"]),
        };
        let pre = Preprocessor::new(cfg, DecodeLimits::default());
        let photo = e["photo"].as_str().unwrap();
        let bytes = common::read(common::photos_dir().join(photo));
        let ours = pre
            .run_to_vec(&bytes)
            .unwrap_or_else(|err| panic!("{photo}: {err}"));
        let reference = common::read_f32(dir.join(e["file"].as_str().unwrap()));
        assert_eq!(
            ours.len(),
            reference.len(),
            "{photo} ({variant}): tensor sizes differ"
        );
        let diffs: Vec<f64> = ours
            .iter()
            .zip(&reference)
            .map(|(a, b)| f64::from((a - b).abs()))
            .collect();
        let mean = diffs.iter().sum::<f64>() / diffs.len() as f64;
        let max = diffs.iter().copied().fold(0.0, f64::max);
        println!(
            "parity {variant:>18} {photo:>28}: mean abs diff {mean:.6}, max abs diff {max:.6}"
        );
        assert!(
            mean <= 0.005,
            "{photo} ({variant}): mean abs diff {mean} > 0.005"
        );
        assert!(
            max <= 0.05,
            "{photo} ({variant}): max abs diff {max} > 0.05"
        );
        worst_mean = worst_mean.max(mean);
        worst_max = worst_max.max(max);
        *per_variant_photos.entry(variant.to_string()).or_default() += 1;
        checked += 1;
    }
    println!(
        "parity: {checked} tensors, worst mean abs diff {worst_mean:.6}, worst max abs diff {worst_max:.6}"
    );
    assert!(
        per_variant_photos
            .get("imagenet_232_224")
            .copied()
            .unwrap_or(0)
            >= 5,
        "at least five real photos: {per_variant_photos:?}"
    );
}
