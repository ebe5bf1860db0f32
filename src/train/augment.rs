//! Train-time augmentation (torchvision's `RandomResizedCrop` + `RandomHorizontalFlip`) and
//! the batch tensors. Evaluation batches go through the server's own [`Preprocessor`], so
//! held-out accuracy is measured on exactly what `wrn serve` will feed the model.

use image::{RgbImage, imageops};
use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::{
    config::PreprocessConfig,
    preprocess::{DecodeLimits, Preprocessor},
};

use super::data::Sample;

/// `RandomResizedCrop(size, scale, ratio)` then an optional horizontal flip.
#[derive(Debug, Clone, PartialEq)]
pub struct Augment {
    pub size: u32,
    /// Range of the crop's area as a fraction of the image (torchvision: 0.08..1).
    pub scale: (f64, f64),
    /// Range of the crop's aspect ratio w/h (torchvision: 3/4..4/3).
    pub ratio: (f64, f64),
    pub hflip: bool,
}

/// A crop rectangle in source pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

impl Augment {
    /// `RandomResizedCrop.get_params`: ten tries at a random area and log-uniform aspect
    /// ratio, then the central crop clamped to the ratio range.
    pub fn crop_box(&self, w: u32, h: u32, rng: &mut impl Rng) -> CropBox {
        let area = f64::from(w) * f64::from(h);
        let (lr0, lr1) = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let target = area * rng.random_range(self.scale.0..=self.scale.1);
            let aspect = rng.random_range(lr0..=lr1).exp();
            let cw = (target * aspect).sqrt().round() as i64;
            let ch = (target / aspect).sqrt().round() as i64;
            if cw > 0 && ch > 0 && cw <= i64::from(w) && ch <= i64::from(h) {
                let (cw, ch) = (cw as u32, ch as u32);
                let y = rng.random_range(0..=h - ch);
                let x = rng.random_range(0..=w - cw);
                return CropBox { x, y, w: cw, h: ch };
            }
        }
        let in_ratio = f64::from(w) / f64::from(h);
        let (cw, ch) = if in_ratio < self.ratio.0 {
            (
                w,
                ((f64::from(w) / self.ratio.0).round() as u32).clamp(1, h),
            )
        } else if in_ratio > self.ratio.1 {
            (
                ((f64::from(h) * self.ratio.1).round() as u32).clamp(1, w),
                h,
            )
        } else {
            (w, h)
        };
        CropBox {
            x: (w - cw) / 2,
            y: (h - ch) / 2,
            w: cw,
            h: ch,
        }
    }

    /// One augmented `size x size` view of `img`.
    pub fn apply(&self, img: &RgbImage, rng: &mut impl Rng) -> RgbImage {
        let b = self.crop_box(img.width(), img.height(), rng);
        let view = imageops::crop_imm(img, b.x, b.y, b.w, b.h).to_image();
        let mut out = imageops::resize(&view, self.size, self.size, imageops::FilterType::Triangle);
        if self.hflip && rng.random_bool(0.5) {
            imageops::flip_horizontal_in_place(&mut out);
        }
        out
    }
}

/// Builds the input and label tensors of one batch.
#[derive(Debug, Clone)]
pub struct Batcher {
    pub augment: Augment,
    /// The server's evaluation transform (resize, center crop, normalise).
    pub eval: Preprocessor,
    /// Normalisation only: an already `crop x crop` image passes the resize unchanged.
    normalise: Preprocessor,
    pub seed: u64,
}

impl Batcher {
    pub fn new(cfg: &PreprocessConfig, augment: Augment, seed: u64) -> Self {
        let exact = PreprocessConfig {
            resize: cfg.crop,
            ..cfg.clone()
        };
        Self {
            augment,
            eval: Preprocessor::new(cfg.clone(), DecodeLimits::default()),
            normalise: Preprocessor::new(exact, DecodeLimits::default()),
            seed,
        }
    }

    pub fn slot_len(&self) -> usize {
        self.eval.slot_len()
    }

    /// Augmented batch of `samples[idx]`. Each image's randomness comes from (seed, epoch,
    /// position in the epoch), so a batch is reproducible on its own (resume, tests).
    pub fn train_batch(
        &self,
        samples: &[Sample],
        idx: &[usize],
        epoch: usize,
        first_position: usize,
    ) -> (Vec<f32>, Vec<i64>) {
        let slot = self.slot_len();
        let mut x = vec![0f32; slot * idx.len()];
        let mut y = Vec::with_capacity(idx.len());
        for (k, (&i, out)) in idx.iter().zip(x.chunks_exact_mut(slot)).enumerate() {
            let mut rng =
                StdRng::seed_from_u64(mix(self.seed, epoch as u64, (first_position + k) as u64));
            let view = self.augment.apply(&samples[i].image, &mut rng);
            self.normalise
                .from_rgb(&view, out)
                .expect("a crop-sized image always preprocesses");
            y.push(samples[i].label as i64);
        }
        (x, y)
    }

    /// Evaluation batch: the server's preprocessing, no randomness.
    pub fn eval_batch(
        &self,
        samples: &[Sample],
        range: std::ops::Range<usize>,
    ) -> anyhow::Result<(Vec<f32>, Vec<i64>)> {
        let slot = self.slot_len();
        let mut x = vec![0f32; slot * range.len()];
        let mut y = Vec::with_capacity(range.len());
        for (s, out) in samples[range].iter().zip(x.chunks_exact_mut(slot)) {
            self.eval
                .from_rgb(&s.image, out)
                .map_err(|e| anyhow::anyhow!("{}: {e}", s.path.display()))?;
            y.push(s.label as i64);
        }
        Ok((x, y))
    }
}

fn mix(seed: u64, epoch: u64, position: u64) -> u64 {
    // splitmix64 over the three numbers: distinct streams per image and epoch
    let mut z = seed
        .wrapping_add(epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(position.wrapping_mul(0xBF58_476D_1CE4_E5B9));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(crop: u32) -> PreprocessConfig {
        PreprocessConfig {
            resize: crop,
            crop,
            interpolation: "bilinear".into(),
            mean: [0.5, 0.5, 0.5],
            std: [0.25, 0.25, 0.25],
        }
    }

    fn aug(size: u32, hflip: bool) -> Augment {
        Augment {
            size,
            scale: (0.25, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            hflip,
        }
    }

    /// Left half black, right half white, with a gradient row index in green.
    fn halves(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            let v = if x < w / 2 { 0 } else { 255 };
            image::Rgb([v, (y * 255 / h.max(1)) as u8, v])
        })
    }

    fn sample(img: RgbImage, label: usize) -> Sample {
        Sample {
            path: "mem".into(),
            label,
            image: img,
        }
    }

    #[test]
    fn crop_boxes_stay_inside_and_respect_the_scale() {
        let a = aug(32, false);
        let mut rng = StdRng::seed_from_u64(1);
        for (w, h) in [(64, 48), (32, 32), (500, 20), (7, 300), (1, 1)] {
            for _ in 0..200 {
                let b = a.crop_box(w, h, &mut rng);
                assert!(
                    b.w >= 1 && b.h >= 1 && b.x + b.w <= w && b.y + b.h <= h,
                    "{b:?} in {w}x{h}"
                );
            }
        }
        // on a square image the ten tries practically always succeed: area within the range
        for _ in 0..200 {
            let b = a.crop_box(100, 100, &mut rng);
            let frac = f64::from(b.w * b.h) / 10_000.0;
            assert!((0.2..=1.0).contains(&frac), "{b:?}");
        }
    }

    #[test]
    fn views_have_the_model_size_and_are_seeded() {
        let a = aug(24, true);
        let img = halves(70, 50);
        let v1 = a.apply(&img, &mut StdRng::seed_from_u64(9));
        let v2 = a.apply(&img, &mut StdRng::seed_from_u64(9));
        assert_eq!(v1.dimensions(), (24, 24));
        assert_eq!(v1, v2, "same seed, same view");
        let differs = (10..20).any(|s| a.apply(&img, &mut StdRng::seed_from_u64(s)) != v1);
        assert!(differs, "other seeds give other views");
    }

    #[test]
    fn flip_mirrors_left_and_right() {
        // full-image crops only, so the flip is the only change
        let a = Augment {
            scale: (1.0, 1.0),
            ratio: (1.0, 1.0),
            ..aug(16, true)
        };
        let img = halves(16, 16);
        let mut flipped = 0;
        for s in 0..40 {
            let v = a.apply(&img, &mut StdRng::seed_from_u64(s));
            if v == img {
                continue;
            }
            flipped += 1;
            for y in 0..16 {
                for x in 0..16 {
                    assert_eq!(v.get_pixel(x, y), img.get_pixel(15 - x, y));
                }
            }
        }
        assert!(
            (8..=32).contains(&flipped),
            "about half flipped: {flipped}/40"
        );
        let no_flip = Augment { hflip: false, ..a };
        for s in 0..10 {
            assert_eq!(no_flip.apply(&img, &mut StdRng::seed_from_u64(s)), img);
        }
    }

    #[test]
    fn train_batches_are_normalised_chw_and_reproducible() {
        let b = Batcher::new(&cfg(8), aug(8, true), 42);
        let samples = vec![
            sample(RgbImage::from_pixel(20, 20, image::Rgb([255, 0, 128])), 1),
            sample(halves(30, 10), 0),
        ];
        let (x, y) = b.train_batch(&samples, &[0, 1], 3, 0);
        assert_eq!(x.len(), 2 * 3 * 8 * 8);
        assert_eq!(y, vec![1, 0]);
        // uniform image: every pixel of each plane is the normalised colour
        let plane = 64;
        assert!(
            x[..plane].iter().all(|v| (*v - 2.0).abs() < 1e-6),
            "{:?}",
            &x[..4]
        );
        assert!(x[plane..2 * plane].iter().all(|v| (*v + 2.0).abs() < 1e-6));
        let (x2, _) = b.train_batch(&samples, &[0, 1], 3, 0);
        assert_eq!(x, x2, "same epoch and positions, same batch");
        let (x3, _) = b.train_batch(&samples, &[0, 1], 4, 0);
        assert_ne!(
            x[3 * plane..],
            x3[3 * plane..],
            "another epoch, another view"
        );
    }

    #[test]
    fn normalising_a_crop_sized_image_leaves_its_pixels_alone() {
        let c = cfg(8);
        let b = Batcher::new(&c, aug(8, false), 0);
        let img = RgbImage::from_fn(8, 8, |x, y| {
            image::Rgb([(x * 30) as u8, (y * 30) as u8, 77])
        });
        let mut out = vec![0f32; b.slot_len()];
        b.normalise.from_rgb(&img, &mut out).unwrap();
        for y in 0..8usize {
            for x in 0..8usize {
                let want = (f32::from(img.get_pixel(x as u32, y as u32)[0]) / 255.0 - 0.5) / 0.25;
                assert!((out[y * 8 + x] - want).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn eval_batches_use_the_server_preprocessing() {
        let c = PreprocessConfig {
            resize: 10,
            ..cfg(8)
        };
        let b = Batcher::new(&c, aug(8, true), 0);
        let img = halves(40, 30);
        let samples = vec![sample(img.clone(), 2)];
        let (x, y) = b.eval_batch(&samples, 0..1).unwrap();
        let want = b
            .eval
            .from_rgb(&img, &mut vec![0f32; b.slot_len()])
            .map(|_| ());
        assert!(want.is_ok());
        let mut direct = vec![0f32; b.slot_len()];
        b.eval.from_rgb(&img, &mut direct).unwrap();
        assert_eq!(x, direct);
        assert_eq!(y, vec![2]);
    }
}
