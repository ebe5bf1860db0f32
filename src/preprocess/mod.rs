//! Decode, orient, convert, resize, crop and normalise one image into one `3xHxW` slot,
//! exactly as torchvision's evaluation transform does on a PIL image:
//! `exif_transpose`, `convert("RGB")`, `Resize(s, BILINEAR, antialias=True)`,
//! `CenterCrop(c)`, `ToTensor()`, `Normalize(mean, std)`.

mod decode;
mod resize;

pub use decode::{DecodeLimits, decode_rgb};
pub use resize::{Geometry, geometry, resize_crop};

use image::RgbImage;

use crate::{config::PreprocessConfig, error::Error};

/// A compiled preprocessing recipe for one model.
#[derive(Debug, Clone)]
pub struct Preprocessor {
    cfg: PreprocessConfig,
    limits: DecodeLimits,
    /// `lut[c][v]` = `(v / 255 - mean[c]) / std[c]`, computed in f32 as torchvision does.
    lut: [[f32; 256]; 3],
}

impl Preprocessor {
    pub fn new(cfg: PreprocessConfig, limits: DecodeLimits) -> Self {
        let mut lut = [[0f32; 256]; 3];
        for (c, table) in lut.iter_mut().enumerate() {
            for (v, out) in table.iter_mut().enumerate() {
                *out = (v as f32 / 255.0 - cfg.mean[c]) / cfg.std[c];
            }
        }
        Self { cfg, limits, lut }
    }

    /// Elements of one preprocessed image: `3 * crop * crop`.
    pub fn slot_len(&self) -> usize {
        3 * self.cfg.crop as usize * self.cfg.crop as usize
    }

    pub fn config(&self) -> &PreprocessConfig {
        &self.cfg
    }

    /// Decodes `bytes` and writes the normalised CHW tensor into `out` (`slot_len()` long).
    pub fn run(&self, bytes: &[u8], out: &mut [f32]) -> Result<(), Error> {
        let rgb = decode_rgb(bytes, &self.limits)?;
        self.from_rgb(&rgb, out)
    }

    /// Convenience: decode and return a fresh slot.
    pub fn run_to_vec(&self, bytes: &[u8]) -> Result<Vec<f32>, Error> {
        let mut out = vec![0f32; self.slot_len()];
        self.run(bytes, &mut out)?;
        Ok(out)
    }

    /// Resizes, crops and normalises an RGB image into `out`.
    pub fn from_rgb(&self, rgb: &RgbImage, out: &mut [f32]) -> Result<(), Error> {
        let crop = self.cfg.crop as usize;
        assert_eq!(out.len(), 3 * crop * crop, "slot has the wrong length");
        let cropped = resize_crop(rgb, self.cfg.resize, self.cfg.crop)?;
        let plane = crop * crop;
        let (r, rest) = out.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        for (i, px) in cropped.chunks_exact(3).enumerate() {
            r[i] = self.lut[0][px[0] as usize];
            g[i] = self.lut[1][px[1] as usize];
            b[i] = self.lut[2][px[2] as usize];
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PreprocessConfig {
        PreprocessConfig {
            resize: 40,
            crop: 32,
            interpolation: "bilinear".into(),
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        }
    }

    #[test]
    fn lut_matches_torchvision_formula() {
        let p = Preprocessor::new(cfg(), DecodeLimits::default());
        assert_eq!(p.lut[0][0], (0.0 - 0.485) / 0.229);
        assert_eq!(p.lut[2][255], (1.0 - 0.406) / 0.225);
    }

    #[test]
    fn uniform_image_gives_uniform_planes() {
        let p = Preprocessor::new(cfg(), DecodeLimits::default());
        let img = RgbImage::from_pixel(64, 48, image::Rgb([10, 128, 250]));
        let mut out = vec![0f32; p.slot_len()];
        p.from_rgb(&img, &mut out).unwrap();
        let plane = 32 * 32;
        assert!(out[..plane].iter().all(|v| *v == p.lut[0][10]));
        assert!(out[plane..2 * plane].iter().all(|v| *v == p.lut[1][128]));
        assert!(out[2 * plane..].iter().all(|v| *v == p.lut[2][250]));
    }

    #[test]
    fn channels_are_not_swapped() {
        let p = Preprocessor::new(cfg(), DecodeLimits::default());
        let img = RgbImage::from_pixel(32, 32, image::Rgb([255, 0, 0]));
        let out = {
            let mut o = vec![0f32; p.slot_len()];
            p.from_rgb(&img, &mut o).unwrap();
            o
        };
        assert!(out[0] > 2.0 && out[32 * 32] < -1.9 && out[2 * 32 * 32] < -1.7);
    }
}
