//! Fuzzes decoding and preprocessing: any bytes must give Ok with a finite, in-range
//! tensor of the right length, or an error; never a panic, an abort or a runaway allocation.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use wrn::{
    config::PreprocessConfig,
    preprocess::{DecodeLimits, Preprocessor},
};

/// Two recipes: the CIFAR one (resize 32, crop 32) and an ImageNet-like one with a crop
/// smaller than the resize, so both code paths of the resize are covered.
fn preprocessors() -> &'static [Preprocessor; 2] {
    static P: OnceLock<[Preprocessor; 2]> = OnceLock::new();
    P.get_or_init(|| {
        // A small pixel limit keeps each run fast and exercises the header check; the
        // server's default (40 MP) would only make libFuzzer's RSS limit the judge.
        let limits = DecodeLimits {
            max_pixels: 4_000_000,
            ..DecodeLimits::default()
        };
        let cfg = |resize, crop| PreprocessConfig {
            resize,
            crop,
            interpolation: "bilinear".into(),
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        };
        [
            Preprocessor::new(cfg(32, 32), limits),
            Preprocessor::new(cfg(40, 24), limits),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    // The length's parity picks the recipe: seeds stay valid images and mutations reach both.
    let pre = &preprocessors()[data.len() % 2];
    if let Ok(out) = pre.run_to_vec(data) {
        assert_eq!(out.len(), pre.slot_len());
        // Normalised 0..=255 with these mean/std lies within about [-2.2, 2.7].
        assert!(out.iter().all(|v| v.is_finite() && (-2.2..=2.7).contains(v)));
    }
});
