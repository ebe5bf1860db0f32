//! Property tests of decoding and preprocessing (no server, no model):
//! - any decodable image, of any size from 1x1 to 300x300, any colour type and any
//!   supported format, preprocesses to exactly `3 x crop x crop` finite values, each one of
//!   the 256 normalised levels of its channel;
//! - a uniform image stays uniform (resizing never invents colours at the borders);
//! - arbitrary bytes, and valid images with bytes flipped or cut off, give Ok or Err and
//!   never panic.

use std::io::Cursor;

use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, LumaA, Rgb, Rgba};
use proptest::prelude::*;
use wrn::{
    config::PreprocessConfig,
    preprocess::{DecodeLimits, Preprocessor},
};

const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];

fn preprocessor(resize: u32, crop: u32) -> Preprocessor {
    let cfg = PreprocessConfig {
        resize,
        crop,
        interpolation: "bilinear".into(),
        mean: MEAN,
        std: STD,
    };
    // Room for 300x300 and the long side of a 1x300 image resized to 64 (64x19200).
    Preprocessor::new(cfg, DecodeLimits::default())
}

/// The normalised value of 8-bit level `v` in channel `c`, computed as the server does.
fn level(c: usize, v: u8) -> f32 {
    (f32::from(v) / 255.0 - MEAN[c]) / STD[c]
}

#[derive(Debug, Clone, Copy)]
enum Colour {
    L8,
    La8,
    Rgb8,
    Rgba8,
    L16,
    La16,
    Rgb16,
    Rgba16,
}

fn colour() -> impl Strategy<Value = Colour> {
    prop_oneof![
        Just(Colour::L8),
        Just(Colour::La8),
        Just(Colour::Rgb8),
        Just(Colour::Rgba8),
        Just(Colour::L16),
        Just(Colour::La16),
        Just(Colour::Rgb16),
        Just(Colour::Rgba16),
    ]
}

fn format() -> impl Strategy<Value = ImageFormat> {
    prop_oneof![
        Just(ImageFormat::Png),
        Just(ImageFormat::Jpeg),
        Just(ImageFormat::WebP),
        Just(ImageFormat::Bmp),
        Just(ImageFormat::Gif),
        Just(ImageFormat::Tiff),
    ]
}

/// A deterministic pattern from `seed`: smooth gradients plus noise, so resizing has work.
fn make_image(w: u32, h: u32, colour: Colour, seed: u64) -> DynamicImage {
    let px = move |x: u32, y: u32, k: u32| -> u16 {
        let mut z = seed ^ (u64::from(x) << 32) ^ (u64::from(y) << 16) ^ u64::from(k);
        z = z.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z ^= z >> 29;
        let noise = (z & 0x3FFF) as u32;
        let grad = (x * 65535 / w.max(1) + y * 3 * 65535 / h.max(1) + k * 20000) & 0xFFFF;
        ((grad + noise) & 0xFFFF) as u16
    };
    let b = |v: u16| (v >> 8) as u8;
    match colour {
        Colour::L8 => ImageBuffer::from_fn(w, h, |x, y| Luma([b(px(x, y, 0))])).into(),
        Colour::La8 => {
            ImageBuffer::from_fn(w, h, |x, y| LumaA([b(px(x, y, 0)), b(px(x, y, 3))])).into()
        }
        Colour::Rgb8 => ImageBuffer::from_fn(w, h, |x, y| {
            Rgb([b(px(x, y, 0)), b(px(x, y, 1)), b(px(x, y, 2))])
        })
        .into(),
        Colour::Rgba8 => ImageBuffer::from_fn(w, h, |x, y| {
            Rgba([
                b(px(x, y, 0)),
                b(px(x, y, 1)),
                b(px(x, y, 2)),
                b(px(x, y, 3)),
            ])
        })
        .into(),
        Colour::L16 => ImageBuffer::from_fn(w, h, |x, y| Luma([px(x, y, 0)])).into(),
        Colour::La16 => ImageBuffer::from_fn(w, h, |x, y| LumaA([px(x, y, 0), px(x, y, 3)])).into(),
        Colour::Rgb16 => {
            ImageBuffer::from_fn(w, h, |x, y| Rgb([px(x, y, 0), px(x, y, 1), px(x, y, 2)])).into()
        }
        Colour::Rgba16 => ImageBuffer::from_fn(w, h, |x, y| {
            Rgba([px(x, y, 0), px(x, y, 1), px(x, y, 2), px(x, y, 3)])
        })
        .into(),
    }
}

/// Encodes in `format`, falling back to the nearest colour type the encoder takes (JPEG has
/// no alpha or 16 bits, GIF and WebP are 8-bit, ...): the fallback must always encode.
fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut buf = Cursor::new(Vec::new());
    if img.write_to(&mut buf, format).is_ok() {
        return buf.into_inner();
    }
    let mut buf = Cursor::new(Vec::new());
    let fallback = match img.color().has_alpha() && format != ImageFormat::Jpeg {
        true => DynamicImage::ImageRgba8(img.to_rgba8()),
        false => DynamicImage::ImageRgb8(img.to_rgb8()),
    };
    fallback
        .write_to(&mut buf, format)
        .unwrap_or_else(|e| panic!("{format:?} cannot encode {:?}: {e}", fallback.color()));
    buf.into_inner()
}

/// Checks length, finiteness, range and quantisation of one preprocessed slot.
fn check_slot(out: &[f32], crop: u32) -> Result<(), TestCaseError> {
    let plane = (crop * crop) as usize;
    prop_assert_eq!(out.len(), 3 * plane);
    for (c, values) in out.chunks_exact(plane).enumerate() {
        let (lo, hi) = (level(c, 0), level(c, 255));
        for &v in values {
            prop_assert!(v.is_finite(), "channel {} has {}", c, v);
            prop_assert!(
                (lo..=hi).contains(&v),
                "channel {}: {} outside [{}, {}]",
                c,
                v,
                lo,
                hi
            );
            // Every value is the normalisation of an 8-bit level.
            let q = ((v * STD[c] + MEAN[c]) * 255.0).round().clamp(0.0, 255.0) as u8;
            prop_assert_eq!(
                v,
                level(c, q),
                "channel {}: {} is not a normalised level",
                c,
                v
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn any_decodable_image_gives_a_full_finite_normalised_slot(
        w in 1u32..=300,
        h in 1u32..=300,
        colour in colour(),
        format in format(),
        seed in any::<u64>(),
        crop in 1u32..=64,
        extra in 0u32..=32,
    ) {
        let bytes = encode(&make_image(w, h, colour, seed), format);
        let pre = preprocessor(crop + extra, crop);
        let out = pre.run_to_vec(&bytes);
        prop_assert!(out.is_ok(), "{}x{} {:?} as {:?}: {}", w, h, colour, format, out.unwrap_err());
        check_slot(&out.unwrap(), crop)?;
    }

    #[test]
    fn a_uniform_image_stays_uniform(
        w in 1u32..=300,
        h in 1u32..=300,
        rgb in any::<[u8; 3]>(),
        format in prop_oneof![Just(ImageFormat::Png), Just(ImageFormat::Bmp), Just(ImageFormat::Tiff),
                              Just(ImageFormat::WebP)],
        crop in 1u32..=64,
        extra in 0u32..=32,
    ) {
        let img = DynamicImage::ImageRgb8(ImageBuffer::from_pixel(w, h, Rgb(rgb)));
        let pre = preprocessor(crop + extra, crop);
        let out = pre.run_to_vec(&encode(&img, format)).unwrap();
        let plane = (crop * crop) as usize;
        for (c, values) in out.chunks_exact(plane).enumerate() {
            let want = level(c, rgb[c]);
            prop_assert!(values.iter().all(|v| *v == want), "{}x{} {:?}: channel {} not uniform", w, h, format, c);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let pre = preprocessor(32, 32);
        if let Ok(out) = pre.run_to_vec(&bytes) {
            check_slot(&out, 32)?;
        }
    }

    #[test]
    fn damaged_images_never_panic(
        format in format(),
        colour in colour(),
        w in 1u32..=64,
        h in 1u32..=64,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        keep in any::<prop::sample::Index>(),
        cut in any::<bool>(),
    ) {
        let mut bytes = encode(&make_image(w, h, colour, 7), format);
        for (at, v) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= v;
        }
        if cut {
            bytes.truncate(keep.index(bytes.len() + 1));
        }
        let pre = preprocessor(24, 16);
        if let Ok(out) = pre.run_to_vec(&bytes) {
            check_slot(&out, 16)?;
        }
    }
}
