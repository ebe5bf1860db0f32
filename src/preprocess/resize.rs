//! torchvision's `Resize(s)` on a PIL image (Pillow's antialiased bilinear resampling,
//! shorter side to `s`) followed by `CenterCrop(c)`, reimplemented bit for bit.

use image::RgbImage;

use crate::error::Error;

/// Where the crop lies in the resized image, as torchvision computes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Size after `Resize`.
    pub resized_w: u32,
    pub resized_h: u32,
    /// Top-left of the crop in the resized image (may be negative: zero padding).
    pub left: i64,
    pub top: i64,
}

/// `torchvision.transforms.functional._compute_resized_output_size` and `center_crop`.
pub fn geometry(w: u32, h: u32, resize: u32, crop: u32) -> Geometry {
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    // Python: int(requested_new_short * long / short), float division then truncation.
    let new_long = ((f64::from(resize) * f64::from(long)) / f64::from(short)) as u32;
    let (resized_w, resized_h) = if w <= h {
        (resize, new_long)
    } else {
        (new_long, resize)
    };
    // center_crop pads first when the image is smaller than the crop, then crops at
    // int(round((size - crop) / 2.0)) with Python's round-half-to-even.
    let offset = |size: u32| -> i64 {
        if crop > size {
            -(i64::from(crop - size) / 2)
        } else {
            (f64::from(size - crop) / 2.0).round_ties_even() as i64
        }
    };
    Geometry {
        resized_w,
        resized_h,
        left: offset(resized_w),
        top: offset(resized_h),
    }
}

/// Pillow's fixed-point precision for 8-bit resampling (`PRECISION_BITS` in Resample.c).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per-output-pixel source window and fixed-point weights, as Pillow's
/// `precompute_coeffs` + `normalize_coeffs_8bpc` compute them for the bilinear filter.
struct Coeffs {
    /// (first source index, number of taps) per output index.
    bounds: Vec<(usize, usize)>,
    ksize: usize,
    k: Vec<i32>,
}

fn bilinear(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 { 1.0 - x } else { 0.0 }
}

fn precompute(in_size: u32, out_size: u32) -> Coeffs {
    let scale = f64::from(in_size) / f64::from(out_size);
    let filterscale = scale.max(1.0);
    let support = filterscale; // the bilinear filter's support is 1.0
    let ksize = (support.ceil() as usize) * 2 + 1;
    let ss = 1.0 / filterscale;
    let mut bounds = Vec::with_capacity(out_size as usize);
    let mut k = vec![0i32; out_size as usize * ksize];
    let mut w = vec![0f64; ksize];
    for xx in 0..out_size as usize {
        let center = (xx as f64 + 0.5) * scale;
        // C casts truncate toward zero, as `as` does.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(i64::from(in_size)) as usize;
        let n = xmax.saturating_sub(xmin).min(ksize);
        let mut ww = 0.0;
        for (x, wx) in w.iter_mut().enumerate().take(n) {
            *wx = bilinear((x as f64 + xmin as f64 - center + 0.5) * ss);
            ww += *wx;
        }
        let row = &mut k[xx * ksize..(xx + 1) * ksize];
        for x in 0..n {
            let v = if ww != 0.0 { w[x] / ww } else { w[x] };
            let scaled = v * f64::from(1u32 << PRECISION_BITS);
            row[x] = if v < 0.0 {
                (-0.5 + scaled) as i32
            } else {
                (0.5 + scaled) as i32
            };
        }
        bounds.push((xmin, n));
    }
    Coeffs { bounds, ksize, k }
}

#[inline]
fn clip8(v: i64) -> u8 {
    if v >= (1i64 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Returns the `crop x crop` RGB pixels (row-major, interleaved) of the image resized as
/// Pillow's `Image.resize(size, BILINEAR)` does, then center-cropped (zero padding).
///
/// Pillow resamples in two separable passes (horizontal, then vertical) with 22-bit fixed
/// point weights. Every output pixel depends only on its own window, so only the pixels
/// inside the crop are computed: bit-identical to resizing everything and cropping, and
/// cheap even when the resized image would be huge (1x4000 resizes to 232x928000).
pub fn resize_crop(src: &RgbImage, resize: u32, crop: u32) -> Result<Vec<u8>, Error> {
    let (w, h) = src.dimensions();
    let g = geometry(w, h, resize, crop);
    if g.resized_w == 0 || g.resized_h == 0 {
        return Err(Error::invalid(format!(
            "image of {w}x{h} is too thin to resize to a shorter side of {resize}"
        )));
    }
    let crop_i = i64::from(crop);
    let cs = crop as usize;
    let mut out = vec![0u8; cs * cs * 3];
    // The part of the crop window inside the resized image.
    let x0 = g.left.max(0) as usize;
    let x1 = (g.left + crop_i).min(i64::from(g.resized_w)) as usize;
    let y0 = g.top.max(0) as usize;
    let y1 = (g.top + crop_i).min(i64::from(g.resized_h)) as usize;
    if x1 <= x0 || y1 <= y0 {
        return Ok(out);
    }
    let hc = precompute(w, g.resized_w);
    let vc = precompute(h, g.resized_h);
    // Source rows the vertical pass reads for output rows y0..y1.
    let ys = vc.bounds[y0].0;
    let ye = (y0..y1)
        .map(|y| vc.bounds[y].0 + vc.bounds[y].1)
        .max()
        .unwrap_or(ys);
    let cols = x1 - x0;
    let raw = src.as_raw();
    let stride = w as usize * 3;
    let half = 1i64 << (PRECISION_BITS - 1);
    // Horizontal pass over the needed rows and columns only.
    let mut tmp = vec![0u8; (ye - ys) * cols * 3];
    for (ty, sy) in (ys..ye).enumerate() {
        let line = &raw[sy * stride..(sy + 1) * stride];
        let out_line = &mut tmp[ty * cols * 3..(ty + 1) * cols * 3];
        for (cx, xx) in (x0..x1).enumerate() {
            let (xmin, n) = hc.bounds[xx];
            let k = &hc.k[xx * hc.ksize..xx * hc.ksize + n];
            let (mut s0, mut s1, mut s2) = (half, half, half);
            for (i, &kw) in k.iter().enumerate() {
                let p = &line[(xmin + i) * 3..(xmin + i) * 3 + 3];
                let kw = i64::from(kw);
                s0 += i64::from(p[0]) * kw;
                s1 += i64::from(p[1]) * kw;
                s2 += i64::from(p[2]) * kw;
            }
            out_line[cx * 3] = clip8(s0);
            out_line[cx * 3 + 1] = clip8(s1);
            out_line[cx * 3 + 2] = clip8(s2);
        }
    }
    // Vertical pass for the crop rows, written straight into the padded output.
    let px = (x0 as i64 - g.left) as usize;
    for yy in y0..y1 {
        let (ymin, n) = vc.bounds[yy];
        let k = &vc.k[yy * vc.ksize..yy * vc.ksize + n];
        let oy = (yy as i64 - g.top) as usize;
        let out_line = &mut out[(oy * cs + px) * 3..(oy * cs + px + cols) * 3];
        for c in 0..cols * 3 {
            let mut s = half;
            for (i, &kw) in k.iter().enumerate() {
                s += i64::from(tmp[(ymin - ys + i) * cols * 3 + c]) * i64::from(kw);
            }
            out_line[c] = clip8(s);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(w: u32, h: u32, seed: u32) -> RgbImage {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        RgbImage::from_fn(w, h, |x, y| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            let base = ((x * 7 + y * 3) % 256) as u8;
            image::Rgb([
                base,
                (s & 0xff) as u8,
                base.wrapping_add((s >> 8) as u8 / 4),
            ])
        })
    }

    #[test]
    fn torchvision_output_sizes() {
        // 512x384 landscape -> shorter side 232: int(232 * 512 / 384) = 309.
        let g = geometry(512, 384, 232, 224);
        assert_eq!((g.resized_w, g.resized_h), (309, 232));
        // round((309 - 224) / 2) = round(42.5) = 42 (half to even), round(4.0) = 4.
        assert_eq!((g.left, g.top), (42, 4));
        let g = geometry(1, 4000, 232, 224);
        assert_eq!((g.resized_w, g.resized_h), (232, 928_000));
        // Smaller than the crop: padded, offset negative.
        let g = geometry(10, 10, 8, 12);
        assert_eq!((g.resized_w, g.resized_h, g.left, g.top), (8, 8, -2, -2));
    }

    /// Resizes the whole image with the same kernel (no crop), for comparison.
    fn full_resize(src: &RgbImage, rw: u32, rh: u32) -> RgbImage {
        let (w, h) = src.dimensions();
        let (hc, vc) = (precompute(w, rw), precompute(h, rh));
        let tmp = RgbImage::from_fn(rw, h, |x, y| {
            let (xmin, n) = hc.bounds[x as usize];
            let mut s = [1i64 << (PRECISION_BITS - 1); 3];
            for i in 0..n {
                let p = src.get_pixel((xmin + i) as u32, y).0;
                for c in 0..3 {
                    s[c] += i64::from(p[c]) * i64::from(hc.k[x as usize * hc.ksize + i]);
                }
            }
            image::Rgb([clip8(s[0]), clip8(s[1]), clip8(s[2])])
        });
        RgbImage::from_fn(rw, rh, |x, y| {
            let (ymin, n) = vc.bounds[y as usize];
            let mut s = [1i64 << (PRECISION_BITS - 1); 3];
            for i in 0..n {
                let p = tmp.get_pixel(x, (ymin + i) as u32).0;
                for c in 0..3 {
                    s[c] += i64::from(p[c]) * i64::from(vc.k[y as usize * vc.ksize + i]);
                }
            }
            image::Rgb([clip8(s[0]), clip8(s[1]), clip8(s[2])])
        })
    }

    #[test]
    fn cropped_computation_equals_resize_then_crop() {
        for (i, (w, h, r, c)) in [
            (512, 384, 232, 224),
            (300, 451, 256, 224),
            (640, 427, 232, 224),
            (97, 33, 40, 32),
            (1000, 1000, 232, 224),
            (50, 70, 232, 224),
            (10, 10, 8, 12),
        ]
        .into_iter()
        .enumerate()
        {
            let img = noise(w, h, i as u32);
            let g = geometry(w, h, r, c);
            let full = full_resize(&img, g.resized_w, g.resized_h);
            let mut want = Vec::new();
            for y in 0..i64::from(c) {
                for x in 0..i64::from(c) {
                    let (sx, sy) = (x + g.left, y + g.top);
                    if sx < 0
                        || sy < 0
                        || sx >= i64::from(g.resized_w)
                        || sy >= i64::from(g.resized_h)
                    {
                        want.extend_from_slice(&[0, 0, 0]);
                    } else {
                        want.extend_from_slice(&full.get_pixel(sx as u32, sy as u32).0);
                    }
                }
            }
            assert_eq!(resize_crop(&img, r, c).unwrap(), want, "{w}x{h} r{r} c{c}");
        }
    }

    #[test]
    fn identity_resize_is_exact_and_weights_sum_to_one() {
        let img = noise(40, 40, 9);
        assert_eq!(resize_crop(&img, 40, 40).unwrap(), img.as_raw().clone());
        for (i, o) in [(512, 232), (100, 300), (4000, 309), (7, 3)] {
            let c = precompute(i, o);
            for x in 0..o as usize {
                let sum: i64 = c.k[x * c.ksize..x * c.ksize + c.bounds[x].1]
                    .iter()
                    .map(|&k| i64::from(k))
                    .sum();
                assert!(
                    (sum - (1 << PRECISION_BITS)).abs() <= c.ksize as i64,
                    "{i}->{o} at {x}: {sum}"
                );
            }
        }
    }

    #[test]
    fn extreme_aspect_ratio_is_cheap_and_well_formed() {
        let img = noise(1, 4000, 3);
        let out = resize_crop(&img, 232, 224).unwrap();
        assert_eq!(out.len(), 224 * 224 * 3);
    }
}
