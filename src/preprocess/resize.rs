//! torchvision's `Resize(s)` (antialiased bilinear, shorter side to `s`) followed by
//! `CenterCrop(c)`. Normally the whole image is resized and then cropped, exactly as
//! torchvision does. When the resized image would be huge (a 1x4000 image resizes to
//! 232x928000), only a source box aligned to the crop is resampled instead: each output
//! pixel of the separable convolution depends only on its own position, so the result
//! equals resize-then-crop up to one grey level of rounding (a unit test checks this).

use fast_image_resize::{
    FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer,
    images::{Image, ImageRef},
};
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

/// Returns the `crop x crop` RGB pixels (row-major, interleaved) of the resized image.
pub fn resize_crop(src: &RgbImage, resize: u32, crop: u32) -> Result<Vec<u8>, Error> {
    let (w, h) = src.dimensions();
    let g = geometry(w, h, resize, crop);
    if g.resized_w == 0 || g.resized_h == 0 {
        return Err(Error::invalid(format!(
            "image of {w}x{h} is too thin to resize to a shorter side of {resize}"
        )));
    }
    if u64::from(g.resized_w) * u64::from(g.resized_h) <= FULL_RESIZE_MAX_PIXELS {
        return full_then_crop(src, &g, crop);
    }
    cropped_resample(src, &g, crop)
}

/// Above this many resized pixels (48 MB of RGB) only the crop's source box is resampled.
pub const FULL_RESIZE_MAX_PIXELS: u64 = 16_000_000;

fn resize_error(e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("resize: {e}"))
}

/// torchvision's path: resize everything, then crop (zero padding outside).
fn full_then_crop(src: &RgbImage, g: &Geometry, crop: u32) -> Result<Vec<u8>, Error> {
    let (w, h) = src.dimensions();
    let src_img = ImageRef::new(w, h, src.as_raw(), PixelType::U8x3).map_err(resize_error)?;
    let mut dst = Image::new(g.resized_w, g.resized_h, PixelType::U8x3);
    let opts = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    Resizer::new()
        .resize(&src_img, &mut dst, &opts)
        .map_err(resize_error)?;
    let crop = crop as i64;
    let mut out = vec![0u8; (crop * crop * 3) as usize];
    let rw = i64::from(g.resized_w);
    let rh = i64::from(g.resized_h);
    let x0 = g.left.max(0);
    let x1 = (g.left + crop).min(rw);
    if x1 <= x0 {
        return Ok(out);
    }
    let buf = dst.buffer();
    for y in 0..crop {
        let sy = y + g.top;
        if sy < 0 || sy >= rh {
            continue;
        }
        let src_start = ((sy * rw + x0) * 3) as usize;
        let src_end = ((sy * rw + x1) * 3) as usize;
        let dst_start = ((y * crop + (x0 - g.left)) * 3) as usize;
        out[dst_start..dst_start + (src_end - src_start)].copy_from_slice(&buf[src_start..src_end]);
    }
    Ok(out)
}

/// Resamples only the source box under the crop (for huge resized sizes).
fn cropped_resample(src: &RgbImage, g: &Geometry, crop: u32) -> Result<Vec<u8>, Error> {
    let (w, h) = src.dimensions();
    let g = *g;
    // The part of the crop window that lies inside the resized image.
    let x0 = g.left.max(0) as u32;
    let y0 = g.top.max(0) as u32;
    let x1 = ((g.left + i64::from(crop)).min(i64::from(g.resized_w))) as u32;
    let y1 = ((g.top + i64::from(crop)).min(i64::from(g.resized_h))) as u32;
    let (cw, ch) = (x1 - x0, y1 - y0);
    let sx = f64::from(w) / f64::from(g.resized_w);
    let sy = f64::from(h) / f64::from(g.resized_h);
    let src_img = ImageRef::new(w, h, src.as_raw(), PixelType::U8x3).map_err(resize_error)?;
    let mut dst = Image::new(cw, ch, PixelType::U8x3);
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
        .crop(
            f64::from(x0) * sx,
            f64::from(y0) * sy,
            f64::from(cw) * sx,
            f64::from(ch) * sy,
        );
    Resizer::new()
        .resize(&src_img, &mut dst, &options)
        .map_err(resize_error)?;
    if cw == crop && ch == crop {
        return Ok(dst.into_vec());
    }
    // Zero padding around an image smaller than the crop (torchvision pads with 0).
    let crop = crop as usize;
    let mut out = vec![0u8; crop * crop * 3];
    let (px, py) = (
        (i64::from(x0) - g.left) as usize,
        (i64::from(y0) - g.top) as usize,
    );
    let row = cw as usize * 3;
    for (y, line) in dst.buffer().chunks_exact(row).enumerate() {
        let start = ((py + y) * crop + px) * 3;
        out[start..start + row].copy_from_slice(line);
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

    #[test]
    fn cropped_resample_is_within_one_level_of_resize_then_crop() {
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
            let full = full_then_crop(&img, &g, c).unwrap();
            let direct = cropped_resample(&img, &g, c).unwrap();
            assert_eq!(full.len(), direct.len());
            let worst = full
                .iter()
                .zip(&direct)
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap();
            assert!(worst <= 1, "{w}x{h} r{r} c{c}: differs by {worst}");
            assert_eq!(
                resize_crop(&img, r, c).unwrap(),
                full,
                "small images take the exact path"
            );
        }
    }

    #[test]
    fn extreme_aspect_ratio_is_cheap_and_well_formed() {
        let img = noise(1, 4000, 3);
        let out = resize_crop(&img, 232, 224).unwrap();
        assert_eq!(out.len(), 224 * 224 * 3);
    }
}
