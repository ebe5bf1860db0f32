#!/usr/bin/env python3
"""Write the test photos (public-domain scikit-image samples) into models/photos/.

Real photographs, so top-k answers and preprocessing differences are meaningful, in the shapes a
server meets: landscape and portrait, odd sizes, greyscale, RGBA, JPEG (quality 95, 4:4:4) and
PNG, and one JPEG whose pixels are stored rotated with an EXIF Orientation tag (upright only after
exif_transpose; being re-encoded, its pixels are close to but not identical with chelsea.jpg).

    python models/photos.py --out models/photos [--force]

Idempotent: existing files are left alone unless --force. A manifest.json lists every file with
its source, size and mode as stored.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

JPEG_QUALITY = 95
EXIF_ORIENTATION = 0x0112

# (file name, skimage.data function, note). Every entry is bundled with scikit-image (no download).
PHOTOS = [
    ("astronaut.jpg", "astronaut", "RGB 512x512"),
    ("chelsea.jpg", "chelsea", "RGB 451x300 landscape (a cat)"),
    ("coffee.jpg", "coffee", "RGB 600x400 landscape (a cup of coffee)"),
    ("rocket.jpg", "rocket", "RGB 640x427 landscape"),
    ("camera.jpg", "camera", "greyscale 512x512 JPEG (L mode)"),
    ("hubble_deep_field.jpg", "hubble_deep_field", "RGB 1000x872"),
    ("immunohistochemistry.jpg", "immunohistochemistry", "RGB 512x512"),
    ("coins.png", "coins", "greyscale 384x303 PNG"),
    ("motorcycle.png", "stereo_motorcycle", "RGB 741x500 PNG (left image of the stereo pair)"),
    ("logo.png", "logo", "RGBA 500x500 PNG (transparency)"),
]
# Stored rotated 90 degrees counter-clockwise with Orientation=6, so exif_transpose turns it
# upright again: a decoder that ignores EXIF sees a portrait 300x451 image instead of the cat.
EXIF_PHOTO = ("chelsea_exif_rotated.jpg", "chelsea", "RGB, pixels stored 300x451 portrait, EXIF Orientation=6")


def load(fn_name: str) -> np.ndarray:
    img = getattr(data, fn_name)()
    if isinstance(img, tuple):  # stereo_motorcycle returns (left, right, disparity)
        img = img[0]
    return np.ascontiguousarray(img)


def save(arr: np.ndarray, path: Path, exif_orientation: int | None = None) -> Image.Image:
    img = Image.fromarray(arr)
    if path.suffix == ".jpg":
        if img.mode == "RGBA":
            img = img.convert("RGB")
        # 4:4:4 (no chroma subsampling): decoders then differ only in IDCT rounding, not in
        # their chroma upsampling, so PIL's reference and the server's decoder stay within +-1.
        kwargs = {"quality": JPEG_QUALITY, "subsampling": 0}
        if exif_orientation is not None:
            exif = Image.Exif()
            exif[EXIF_ORIENTATION] = exif_orientation
            kwargs["exif"] = exif.tobytes()
        img.save(path, "JPEG", **kwargs)
    else:
        img.save(path, "PNG")
    return img


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "photos")
    p.add_argument("--force", action="store_true", help="rewrite files that already exist")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)

    manifest, written = [], 0
    for fname, fn_name, note in PHOTOS + [EXIF_PHOTO]:
        path = args.out / fname
        if args.force or not path.exists():
            arr = load(fn_name)
            if fname == EXIF_PHOTO[0]:
                # Orientation 6 = "rotate 90 CW to display"; store the upright image rotated 90 CCW.
                save(np.ascontiguousarray(np.rot90(arr, k=1)), path, exif_orientation=6)
            else:
                save(arr, path)
            written += 1
        with Image.open(path) as im:
            manifest.append({"file": fname, "source": f"skimage.data.{fn_name}", "note": note,
                             "format": im.format, "mode": im.mode, "width": im.width, "height": im.height,
                             "exif_orientation": im.getexif().get(EXIF_ORIENTATION)})
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"photos: {len(manifest)} files in {args.out} ({written} written, "
          f"{len(manifest) - written} already present) in {time.monotonic() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
