#!/usr/bin/env python3
"""A corpus of odd and hostile image inputs, generated from one real photo, for tests/hostile_inputs.rs.

    .venv/bin/python tests/python/make_corpus.py --photo models/photos/rocket.jpg \
        --out tests/data/generated/corpus

Everything is derived from the photo (no hand-made binary blobs) and is deterministic. The
photo is first reduced to `upright.png` (lossless RGB, the reference); every other file is made
from those pixels. manifest.json lists each file with its expected outcome:

    {"file": "orient_6.png", "expect": "ok" | "INVALID_ARGUMENT" | "RESOURCE_EXHAUSTED",
     "same_top1_as": "upright.png" | "<other file>" | null,
     "message_contains": "<substring an error message must contain>" | null,
     "why": "<what the file exercises>"}

`same_top1_as` is set only where the decoded, oriented, RGB-converted pixels are *identical*
to the named file's (checked here with PIL, which is the preprocessing the models were made
for): lossless re-encodings, EXIF orientations of lossless files, alpha that PIL's
convert("RGB") drops, 16-bit samples whose high byte is the 8-bit value, greyscale and palette
compared against their own lossless RGB rendering. Lossy variants (JPEG re-encodes, CMYK and
YCCK JPEG, lossy WebP) carry "lossy": true and a PIL-measured mean absolute difference to the
upright pixels; the Rust test decides what it asserts for them.

With --max-side N the photo is first shrunk to fit N x N: the same corpus in small files,
which is what the fuzzer (tests/fuzz) is seeded with.

Must-reject files: zero bytes, random bytes, random bytes behind a JPEG or PNG signature,
truncated JPEG and PNG, PNG headers declaring enormous sizes (valid IHDR CRC), a text file and
an unsupported but valid format (PPM).
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Orientation n -> the PIL transpose ImageOps.exif_transpose applies for it.
EXIF_OPS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# The inverse of each op: what the stored pixels must be so that the op gives back upright.
INVERSE = {
    Image.Transpose.ROTATE_90: Image.Transpose.ROTATE_270,
    Image.Transpose.ROTATE_270: Image.Transpose.ROTATE_90,
}
ORIENTATION_TAG = 0x0112
# The decoder's default pixel limit (src/preprocess/decode.rs, --max-image-pixels).
DEFAULT_MAX_PIXELS = 40_000_000


def exif_bytes(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    return exif.tobytes()


def stored_for(upright: Image.Image, orientation: int) -> Image.Image:
    if orientation == 1:
        return upright.copy()
    op = EXIF_OPS[orientation]
    return upright.transpose(INVERSE.get(op, op))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png(width: int, height: int, bit_depth: int, colour_type: int, raw_rows: bytes | None) -> bytes:
    """A minimal PNG: IHDR, one IDAT of `raw_rows` (filter bytes included), IEND."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    idat = zlib.compress(raw_rows if raw_rows is not None else b"\x00" * 16, 9)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def png16(arr: np.ndarray, colour_type: int) -> bytes:
    """16-bit PNG from a uint16 array (HxW for grey, HxWx3 for RGB), big-endian samples."""
    h, w = arr.shape[:2]
    be = arr.astype(">u2").reshape(h, -1).tobytes()
    row = len(be) // h
    raw = b"".join(b"\x00" + be[i * row:(i + 1) * row] for i in range(h))
    return write_png(w, h, 16, colour_type, raw)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def pil_rgb(data: bytes) -> np.ndarray:
    """What the reference pipeline sees: PIL open, exif_transpose, convert("RGB")."""
    with Image.open(io.BytesIO(data)) as im:
        im.seek(0)
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def patch_adobe_transform(jpeg: bytes, transform: int) -> bytes:
    """Sets the colour transform byte of the Adobe APP14 segment (0 = CMYK, 2 = YCCK)."""
    at = jpeg.find(b"Adobe") - 4  # FF EE, a 2-byte length, then "Adobe"
    if at < 0 or jpeg[at:at + 2] != b"\xff\xee":
        raise SystemExit("make_corpus: Pillow wrote no Adobe APP14 segment for a CMYK JPEG")
    length = struct.unpack(">H", jpeg[at + 2:at + 4])[0]
    pos = at + 2 + length - 1  # the transform flag is the segment's last byte
    return jpeg[:pos] + bytes([transform]) + jpeg[pos + 1:]


def ycck_jpeg(upright: Image.Image) -> bytes:
    """An Adobe YCCK JPEG whose decoded CMYK gives back `upright` with K = 0.

    Pillow cannot encode YCCK, so the YCC planes are computed here and written through
    Pillow's CMYK path, which stores components without colour conversion (but inverted, as
    Adobe CMYK is); the APP14 transform byte is then set to 2 (YCCK). A decoder applies
    YCC->RGB, inverts to CMY and keeps K; with Adobe inversion and K = 0 that is `upright`.
    """
    inverted = Image.fromarray(255 - np.asarray(upright), "RGB")
    y, cb, cr = (np.asarray(c) for c in inverted.convert("YCbCr").split())
    k_stored = np.full_like(y, 255)  # Adobe-inverted K: 255 stored means no black ink
    # Pillow writes CMYK as "CMYK;I" (each component inverted), so feed it 255 - target.
    planes = [255 - y, 255 - cb, 255 - cr, 255 - k_stored]
    cmyk = Image.merge("CMYK", [Image.fromarray(p.astype(np.uint8), "L") for p in planes])
    data = encode(cmyk, "JPEG", quality=100, subsampling=0)
    return patch_adobe_transform(data, 2)


def webp_exif_chunk_bomb(upright: Image.Image) -> bytes:
    """A small lossless WebP whose EXIF chunk header declares 3.8 GB (the file holds ~30 bytes).

    Found by the fuzzer (tests/fuzz, decode_preprocess): image-webp allocates a metadata
    chunk's declared size before reading it, and image's WebP decoder passes it no memory
    limit, so reading the EXIF orientation of this ~1 KB file asked for a 3.8 GB buffer.
    PIL (libwebp) refuses the file.
    """
    data = bytearray(encode(upright, "WEBP", lossless=True, exact=True, exif=exif_bytes(1)))
    at = data.find(b"EXIF", 12)
    if at < 0 or data[12:16] != b"VP8X":
        raise SystemExit("make_corpus: Pillow wrote no VP8X/EXIF chunks for a WebP with exif")
    data[at + 4:at + 8] = struct.pack("<I", 3_821_477_827)
    return bytes(data)


class Corpus:
    def __init__(self, out: Path, upright: Image.Image):
        self.out = out
        self.upright = upright
        self.upright_rgb = np.asarray(upright)
        self.entries: list[dict] = []
        self.names: set[str] = set()

    def add(self, name: str, data: bytes, expect: str = "ok", *, same_top1_as: str | None = None,
            message_contains: str | None = None, why: str, reference: np.ndarray | None = None,
            lossy: bool = False, pil_differs: str | None = None) -> None:
        if name in self.names:
            raise SystemExit(f"make_corpus: duplicate name {name}")
        self.names.add(name)
        (self.out / name).write_bytes(data)
        entry = {"file": name, "expect": expect, "same_top1_as": same_top1_as,
                 "message_contains": message_contains, "why": why}
        if pil_differs is not None:
            entry["pil_differs"] = pil_differs
        if expect == "ok":
            got = pil_rgb(data)
            if same_top1_as is not None and pil_differs is None:
                want = reference if reference is not None else self.upright_rgb
                if got.shape != want.shape or not np.array_equal(got, want):
                    raise SystemExit(f"make_corpus: {name} does not decode (PIL) to the same pixels as {same_top1_as}")
            if lossy:
                if got.shape != self.upright_rgb.shape:
                    raise SystemExit(f"make_corpus: {name} decodes to {got.shape}, not {self.upright_rgb.shape}")
                mad = float(np.abs(got.astype(np.int16) - self.upright_rgb.astype(np.int16)).mean())
                entry["lossy"] = True
                entry["mean_abs_diff_to_upright"] = round(mad, 3)
                if mad > 8.0:
                    raise SystemExit(f"make_corpus: {name} differs from upright by {mad:.2f} (PIL): encoder problem")
        self.entries.append(entry)


def build(photo: Path, out: Path, max_side: int | None = None) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        if old.is_file():
            old.unlink()
    with Image.open(photo) as im:
        upright = ImageOps.exif_transpose(im).convert("RGB")
    if max_side is not None:
        upright.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    c = Corpus(out, upright)
    rgb = c.upright_rgb
    up = "upright.png"
    c.add(up, encode(upright, "PNG"), why="the reference: the photo as lossless 8-bit RGB PNG")

    # EXIF orientations: stored pixels transformed so that applying the tag gives upright back.
    for n in range(1, 9):
        stored = stored_for(upright, n)
        c.add(f"orient_{n}.png", encode(stored, "PNG", exif=exif_bytes(n)), same_top1_as=up,
              why=f"lossless PNG, eXIf orientation {n}; oriented pixels equal upright.png")
        c.add(f"orient_{n}.jpg", encode(stored, "JPEG", quality=95, subsampling=0, exif=exif_bytes(n)),
              lossy=True, why=f"JPEG q95 4:4:4, EXIF orientation {n} (lossy re-encode)")
    c.add("orient_6.webp", encode(stored_for(upright, 6), "WEBP", lossless=True, exact=True, exif=exif_bytes(6)),
          same_top1_as=up, why="lossless WebP with EXIF orientation 6")

    # Lossless re-encodings of the same pixels.
    c.add("lossless.webp", encode(upright, "WEBP", lossless=True, exact=True), same_top1_as=up, why="lossless WebP")
    c.add("photo.bmp", encode(upright, "BMP"), same_top1_as=up, why="24-bit BMP")
    c.add("photo.tiff", encode(upright, "TIFF"), same_top1_as=up, why="uncompressed RGB TIFF")
    c.add("photo_lzw.tiff", encode(upright, "TIFF", compression="tiff_lzw"), same_top1_as=up, why="LZW RGB TIFF")
    alpha = Image.fromarray(((np.indices(rgb.shape[:2]).sum(axis=0) * 7) % 256).astype(np.uint8), "L")
    rgba = upright.copy()
    rgba.putalpha(alpha)
    c.add("rgba.png", encode(rgba, "PNG"), same_top1_as=up,
          why="RGBA with a varying alpha ramp (some fully transparent): convert('RGB') drops alpha, never composites")
    c.add("rgb16.png", png16(rgb.astype(np.uint16) * 257, 2), same_top1_as=up,
          why="16-bit RGB PNG (v * 257): the high byte is the 8-bit value")
    rgba16 = np.dstack([rgb.astype(np.uint16) * 257, np.asarray(alpha).astype(np.uint16) * 257])
    c.add("rgba16.png", png16(rgba16, 6), same_top1_as=up, why="16-bit RGBA PNG: high bytes, alpha dropped")

    # Greyscale: compared with the same grey rendered as lossless RGB.
    gray = upright.convert("L")
    gray_rgb = np.asarray(gray.convert("RGB"))
    c.add("gray_rgb.png", encode(gray.convert("RGB"), "PNG"), why="the greyscale reference as 8-bit RGB PNG")
    c.add("gray.png", encode(gray, "PNG"), same_top1_as="gray_rgb.png", reference=gray_rgb,
          why="8-bit greyscale (L) PNG: grey replicated to RGB")
    la = gray.copy()
    la.putalpha(alpha)
    c.add("la.png", encode(la, "PNG"), same_top1_as="gray_rgb.png", reference=gray_rgb,
          why="greyscale + alpha (LA) PNG: alpha dropped")
    c.add("gray16.png", png16(np.asarray(gray).astype(np.uint16) * 257, 0), same_top1_as="gray_rgb.png",
          reference=gray_rgb, why="16-bit greyscale (I;16) PNG: the high byte is the 8-bit grey",
          pil_differs="PIL opens it as I;16 and convert('RGB') clips every value above 255 to white; the server "
                      "keeps the high byte (as PIL does for 16-bit RGB), which is the sensible reading")
    c.add("gray.jpg", encode(gray, "JPEG", quality=95), why="greyscale JPEG (one component)")

    # Palette: compared with its own lossless RGB rendering.
    pal = upright.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    pal_rgb = np.asarray(pal.convert("RGB"))
    c.add("palette_rgb.png", encode(pal.convert("RGB"), "PNG"), why="the palette image's colours as 8-bit RGB PNG")
    c.add("palette.png", encode(pal, "PNG"), same_top1_as="palette_rgb.png", reference=pal_rgb,
          why="palette (P) PNG, 256 colours")
    pal_t = pal.copy()
    pal_t.info["transparency"] = 0
    c.add("palette_trns.png", encode(pal_t, "PNG", transparency=0), same_top1_as="palette_rgb.png",
          reference=pal_rgb, why="palette PNG with a tRNS entry: transparency dropped like alpha")
    other = Image.fromarray(255 - pal_rgb, "RGB").quantize(palette=pal, dither=Image.Dither.NONE)
    frames = [pal, other]
    c.add("animated.gif", encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0,
                                  optimize=False),
          same_top1_as="palette_rgb.png", reference=pal_rgb,
          why="animated GIF, 2 frames: the first is the photo, the second its negative; the first is classified")

    # Lossy re-encodings.
    c.add("baseline.jpg", encode(upright, "JPEG", quality=95, subsampling=0), lossy=True, why="baseline JPEG q95 4:4:4")
    c.add("subsampled.jpg", encode(upright, "JPEG", quality=85, subsampling=2), lossy=True,
          why="baseline JPEG q85 4:2:0 chroma subsampling")
    c.add("progressive.jpg", encode(upright, "JPEG", quality=95, subsampling=0, progressive=True), lossy=True,
          why="progressive JPEG q95")
    c.add("cmyk.jpg", encode(upright.convert("CMYK"), "JPEG", quality=95, subsampling=0), lossy=True,
          why="Adobe CMYK JPEG (inverted components, K = 0), as PIL writes it")
    c.add("ycck.jpg", ycck_jpeg(upright), lossy=True,
          why="Adobe YCCK JPEG (APP14 transform 2): YCC planes computed here, written via Pillow's CMYK path")
    c.add("lossy.webp", encode(upright, "WEBP", quality=90), lossy=True, why="lossy WebP q90")

    # Degenerate sizes.
    c.add("1x1.png", encode(upright.resize((1, 1), Image.Resampling.BOX), "PNG"), why="a single pixel")
    c.add("1x4000.png", encode(upright.resize((1, 4000), Image.Resampling.BILINEAR), "PNG"),
          why="1 wide, 4000 tall: resizing the short side to the model's size makes a very long image")
    c.add("4000x1.png", encode(upright.resize((4000, 1), Image.Resampling.BILINEAR), "PNG"),
          why="4000 wide, 1 tall")

    # Must reject.
    bad = "INVALID_ARGUMENT"
    rng = np.random.default_rng(20261203)
    c.add("empty.bin", b"", bad, message_contains="empty", why="zero bytes")
    noise = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    noise = b"\x00" + noise[1:]  # no image signature starts with NUL
    c.add("random.bin", noise, bad, message_contains="not a recognised image", why="4 KiB of random bytes")
    c.add("jpeg_magic_noise.jpg", b"\xff\xd8\xff\xe0" + noise[4:], bad, message_contains="jpeg",
          why="a JPEG signature followed by random bytes")
    c.add("png_magic_noise.png", b"\x89PNG\r\n\x1a\n" + noise[8:], bad, message_contains="png",
          why="a PNG signature followed by random bytes")
    jpeg = encode(upright, "JPEG", quality=95)
    c.add("truncated.jpg", jpeg[: len(jpeg) // 2], bad, message_contains="jpeg",
          why="the first half of a baseline JPEG (an interrupted upload)")
    png = encode(upright, "PNG")
    c.add("truncated.png", png[: len(png) // 2], bad, message_contains="png",
          why="the first half of a PNG (an interrupted upload)")
    c.add("huge_100000x100000.png", write_png(100_000, 100_000, 8, 2, None), "RESOURCE_EXHAUSTED",
          message_contains="limit",
          why="IHDR declares 100000x100000 RGB (valid CRC, a tiny IDAT): a decompression bomb; 1e10 pixels "
              "also exceeds the 65535 side limit")
    c.add("huge_60000x60000.png", write_png(60_000, 60_000, 8, 2, None), "RESOURCE_EXHAUSTED",
          message_contains="above the limit",
          why="IHDR declares 60000x60000 (3.6e9 pixels, each side within 65535): only the pixel limit stops it")
    c.add("huge_40001x1000.png", write_png(40_001, 1000, 8, 0, None), "RESOURCE_EXHAUSTED",
          message_contains="above the limit",
          why=f"just above the default pixel limit ({DEFAULT_MAX_PIXELS})")
    c.add("webp_exif_chunk_bomb.webp", webp_exif_chunk_bomb(upright.resize((21, 32))), bad, message_contains="webp",
          why="fuzzer regression: a lossless WebP whose EXIF chunk declares 3.8 GB; must be refused, "
              "without allocating the declared size")
    c.add("text.txt", b"This is a text file, not an image.\nIt has two lines.\n", bad,
          message_contains="not a recognised image", why="a plain text file")
    c.add("photo.ppm", encode(upright, "PPM"), bad, message_contains="not supported",
          why="a valid PPM: a format the decoder recognises but the server does not accept")
    return c.entries


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photo", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--max-side", type=int, default=None,
                    help="shrink the photo first (small seeds for the fuzzer: tests/fuzz/README.md)")
    args = ap.parse_args()
    entries = build(args.photo, args.out, args.max_side)
    manifest = {"photo": args.photo.name, "reference": "upright.png", "entries": entries}
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"make_corpus: {len(entries)} files in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
