//! Decoding any supported format into 8-bit RGB the way PIL's `exif_transpose` followed by
//! `convert("RGB")` does, with the decoded size checked from the header before any pixel
//! is decoded (decompression-bomb guard).

use std::io::Cursor;

use image::{
    DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage, metadata::Orientation,
};

use crate::error::Error;

/// Limits on one encoded image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest accepted width x height, read from the header before decoding.
    pub max_pixels: u64,
    /// Largest accepted side.
    pub max_side: u32,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        // 40 MP covers every camera photo in common use; a 40 MP RGB image is 120 MB.
        Self {
            max_pixels: 40_000_000,
            max_side: 65_535,
        }
    }
}

const FORMATS: &[ImageFormat] = &[
    ImageFormat::Jpeg,
    ImageFormat::Png,
    ImageFormat::WebP,
    ImageFormat::Bmp,
    ImageFormat::Gif,
    ImageFormat::Tiff,
];

/// Decodes an encoded image into upright 8-bit RGB.
pub fn decode_rgb(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, Error> {
    if bytes.is_empty() {
        return Err(Error::invalid("image is empty (0 bytes)"));
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::invalid(format!("cannot read image: {e}")))?;
    let format = match reader.format() {
        Some(f) if FORMATS.contains(&f) => f,
        Some(f) => {
            return Err(Error::invalid(format!(
                "image format {f:?} is not supported (JPEG, PNG, WebP, BMP, GIF, TIFF are)"
            )));
        }
        None => {
            return Err(Error::invalid(
                "bytes are not a recognised image (JPEG, PNG, WebP, BMP, GIF or TIFF expected)",
            ));
        }
    };
    if format == ImageFormat::Jpeg && !jpeg_has_end(bytes) {
        // PIL refuses these ("image file is truncated"); some decoders silently pad them.
        return Err(Error::invalid(
            "JPEG data is truncated (no end-of-image marker after the scan data)",
        ));
    }
    if format == ImageFormat::WebP && !webp_chunks_fit(bytes) {
        // A chunk that claims more bytes than the file holds is corrupt; refusing it here
        // also keeps a decoder from allocating the claimed size (an EXIF chunk of 3.8 GB).
        return Err(Error::invalid(
            "WebP data is corrupt or truncated (a chunk is larger than the file)",
        ));
    }
    let mut reader = reader;
    let mut lim = image::Limits::default();
    // Room for the decoded image at 16 bits per channel with alpha, plus decoder scratch.
    lim.max_alloc = Some(limits.max_pixels.saturating_mul(8).saturating_add(64 << 20));
    reader.limits(lim);
    let mut decoder = reader.into_decoder().map_err(|e| decode_error(format, e))?;
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 {
        return Err(Error::invalid(format!(
            "{format:?} image has zero size ({w}x{h})"
        )));
    }
    let pixels = u64::from(w) * u64::from(h);
    if pixels > limits.max_pixels || w > limits.max_side || h > limits.max_side {
        return Err(Error::ResourceExhausted(format!(
            "image is {w}x{h} = {pixels} pixels, above the limit of {} pixels and {} pixels a side",
            limits.max_pixels, limits.max_side
        )));
    }
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| decode_error(format, e))?;
    img.apply_orientation(orientation);
    Ok(to_rgb8(img))
}

/// True when a JPEG's scan data is followed by an end-of-image marker. Inside entropy-
/// coded data 0xFF is always stuffed or a restart marker, so FF D9 after the first
/// start-of-scan can only be the real EOI (an EXIF thumbnail's EOI comes before it).
fn jpeg_has_end(bytes: &[u8]) -> bool {
    let mut i = 2; // after SOI
    while i + 4 <= bytes.len() {
        if bytes[i] != 0xFF {
            return false;
        }
        let marker = bytes[i + 1];
        if marker == 0xFF {
            i += 1; // fill byte
            continue;
        }
        if marker == 0xDA {
            break;
        }
        if (0xD0..=0xD9).contains(&marker) || marker == 0x01 {
            i += 2;
            continue;
        }
        let len = usize::from(u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]));
        i += 2 + len;
    }
    i < bytes.len() && bytes[i..].windows(2).any(|w| w == [0xFF, 0xD9])
}

/// True when every RIFF chunk of a WebP file lies within the file.
fn webp_chunks_fit(bytes: &[u8]) -> bool {
    if bytes.len() < 12 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WEBP" {
        return false;
    }
    let mut i = 12usize;
    while i + 8 <= bytes.len() {
        let size =
            u32::from_le_bytes([bytes[i + 4], bytes[i + 5], bytes[i + 6], bytes[i + 7]]) as usize;
        let end = i + 8 + size + (size & 1);
        if i + 8 + size > bytes.len() {
            return false;
        }
        i = end;
    }
    true
}

fn decode_error(format: ImageFormat, e: image::ImageError) -> Error {
    match e {
        image::ImageError::Limits(l) => Error::ResourceExhausted(format!(
            "{format:?} image exceeds decoding limits ({l}): above the limit of what one image may allocate"
        )),
        other => Error::invalid(format!("cannot decode {format:?} image: {other}")),
    }
}

/// Converts any colour type to RGB8 as PIL's `convert("RGB")` does: alpha is dropped (not
/// composited), grey is replicated, 16-bit RGB keeps the high byte. One deliberate
/// difference: PIL clips 16-bit grey ("I;16") above 255 to white; we keep the high byte, so
/// a 16-bit grey photo stays a photo.
pub fn to_rgb8(img: DynamicImage) -> RgbImage {
    match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageRgb16(_)
        | DynamicImage::ImageRgba16(_)
        | DynamicImage::ImageLuma16(_)
        | DynamicImage::ImageLumaA16(_) => {
            let rgb16 = img.to_rgb16();
            let (w, h) = rgb16.dimensions();
            let data = rgb16
                .into_raw()
                .into_iter()
                .map(|v| (v >> 8) as u8)
                .collect();
            RgbImage::from_raw(w, h, data).expect("buffer length matches dimensions")
        }
        other => other.to_rgb8(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut buf = Cursor::new(Vec::new());
        img.write_to(&mut buf, format).unwrap();
        buf.into_inner()
    }

    #[test]
    fn rejects_empty_and_garbage_with_messages() {
        let lim = DecodeLimits::default();
        let e = decode_rgb(b"", &lim).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        let e = decode_rgb(b"hello, this is text", &lim)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a recognised image"), "{e}");
    }

    #[test]
    fn truncated_png_is_invalid() {
        let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(64, 64, image::Rgb([1, 2, 3])));
        let png = encode(&img, ImageFormat::Png);
        let e = decode_rgb(&png[..png.len() / 2], &DecodeLimits::default()).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn truncated_jpeg_is_invalid_but_whole_one_decodes() {
        let img = DynamicImage::ImageRgb8(RgbImage::from_fn(64, 48, |x, y| {
            image::Rgb([x as u8 * 3, y as u8 * 5, 7])
        }));
        let jpg = encode(&img, ImageFormat::Jpeg);
        assert!(decode_rgb(&jpg, &DecodeLimits::default()).is_ok());
        let mut trailing = jpg.clone();
        trailing.extend_from_slice(b"trailing bytes after EOI are tolerated");
        assert!(decode_rgb(&trailing, &DecodeLimits::default()).is_ok());
        let e = decode_rgb(&jpg[..jpg.len() - 40], &DecodeLimits::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("truncated"), "{e}");
    }

    #[test]
    fn pixel_limit_is_checked_from_the_header() {
        let img = DynamicImage::ImageRgb8(RgbImage::new(100, 100));
        let png = encode(&img, ImageFormat::Png);
        let lim = DecodeLimits {
            max_pixels: 9_999,
            ..DecodeLimits::default()
        };
        let e = decode_rgb(&png, &lim).unwrap_err().to_string();
        assert!(e.contains("10000 pixels"), "{e}");
    }

    #[test]
    fn sixteen_bit_keeps_high_byte_and_alpha_is_dropped() {
        let img = DynamicImage::ImageRgba16(image::ImageBuffer::from_pixel(
            2,
            2,
            image::Rgba([0x12ff, 0x3400, 0xffff, 0]),
        ));
        let rgb = to_rgb8(img);
        assert_eq!(rgb.get_pixel(0, 0).0, [0x12, 0x34, 0xff]);
        let la =
            DynamicImage::ImageLumaA8(image::ImageBuffer::from_pixel(1, 1, image::LumaA([77, 0])));
        assert_eq!(to_rgb8(la).get_pixel(0, 0).0, [77, 77, 77]);
    }
}
