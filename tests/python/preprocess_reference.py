#!/usr/bin/env python3
"""Reference preprocessing tensors, made with PIL + torchvision exactly as the models expect.

For each photo: PIL open -> ImageOps.exif_transpose -> convert("RGB") ->
transforms.Compose([Resize(resize, BILINEAR, antialias=True), CenterCrop(crop), ToTensor(),
Normalize(mean, std)]) and the CHW float32 result is written raw (little-endian, row-major).

    python tests/python/preprocess_reference.py --photos models/photos \
        --out tests/data/generated/preprocess

Variants (the Rust preprocessing is compared against each):
    imagenet_232_224   <out>/<stem>.f32            resize 232, crop 224, ImageNet mean/std (V2 weights)
    imagenet_256_224   <out>/resize256/<stem>.f32  resize 256, crop 224, ImageNet mean/std (V1 weights)
    cifar_32_32        <out>/cifar32/<stem>.f32    resize 32, crop 32, CIFAR-10 mean/std

Notes for a reimplementation: torchvision resizes a PIL image with PIL's own antialiased bilinear
filter (Image.resize, BILINEAR) and the result is rounded to uint8 before ToTensor divides by 255,
so (x * std + mean) * 255 recovers the exact resized uint8 pixels. The resized size is
(resize, int(resize * long / short)) with truncation; CenterCrop's offset is
int(round((size - crop) / 2.0)) with Python's round-half-to-even (61.5 -> 62, 60.5 -> 60).
manifest.json records the oriented, resized sizes and crop offsets per entry. RGBA is converted
by dropping alpha (PIL convert("RGB")), greyscale by replicating the channel.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, ImageOps
import torch
import torchvision
from torchvision import transforms
from torchvision.transforms import InterpolationMode

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
CIFAR10_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR10_STD = [0.2470, 0.2435, 0.2616]

VARIANTS = {
    # name: (subdir, resize, crop, mean, std)
    "imagenet_232_224": ("", 232, 224, IMAGENET_MEAN, IMAGENET_STD),
    "imagenet_256_224": ("resize256", 256, 224, IMAGENET_MEAN, IMAGENET_STD),
    "cifar_32_32": ("cifar32", 32, 32, CIFAR10_MEAN, CIFAR10_STD),
}
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def list_photos(photos: Path) -> list[Path]:
    found = sorted(p for p in photos.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file())
    if not found:
        raise SystemExit(f"no photos in {photos}; run: python models/photos.py --out {photos}")
    return found


def open_rgb(path: Path) -> Image.Image:
    """Decode as the server must: apply EXIF orientation, then any colour type to RGB."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        return im.convert("RGB")


def transform(resize: int, crop: int, mean, std) -> transforms.Compose:
    return transforms.Compose([
        transforms.Resize(resize, interpolation=InterpolationMode.BILINEAR, antialias=True),
        transforms.CenterCrop(crop),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])


def preprocess(path: Path, resize: int, crop: int, mean, std) -> np.ndarray:
    """The reference CHW float32 tensor for one image file."""
    t = transform(resize, crop, mean, std)(open_rgb(path))
    return t.numpy().astype(np.float32, copy=False)


def resized_size(w: int, h: int, resize: int) -> tuple[int, int]:
    if w <= h:
        return resize, int(resize * h / w)
    return int(resize * w / h), resize


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--photos", type=Path, default=Path("models/photos"))
    p.add_argument("--out", type=Path, default=Path("tests/data/generated/preprocess"))
    args = p.parse_args(argv)
    t0 = time.monotonic()
    torch.set_num_threads(1)
    photos = list_photos(args.photos)
    entries = []
    for variant, (subdir, resize, crop, mean, std) in VARIANTS.items():
        vdir = args.out / subdir
        vdir.mkdir(parents=True, exist_ok=True)
        for photo in photos:
            arr = preprocess(photo, resize, crop, mean, std)
            assert arr.shape == (3, crop, crop) and arr.dtype == np.float32
            data = arr.astype("<f4").tobytes(order="C")
            rel = f"{subdir}/{photo.stem}.f32" if subdir else f"{photo.stem}.f32"
            (args.out / rel).write_bytes(data)
            with Image.open(photo) as im:
                stored = [im.width, im.height]
                oriented = list(ImageOps.exif_transpose(im).size)
            rw, rh = resized_size(oriented[0], oriented[1], resize)
            entries.append({
                "variant": variant, "photo": photo.name, "file": rel, "dtype": "float32", "layout": "CHW",
                "shape": [3, crop, crop], "resize": resize, "crop": crop, "interpolation": "bilinear",
                "antialias": True, "mean": mean, "std": std,
                "stored_size": stored, "oriented_size": oriented, "resized_size": [rw, rh],
                "crop_offset": [int(round((rw - crop) / 2.0)), int(round((rh - crop) / 2.0))],
                "min": float(arr.min()), "max": float(arr.max()), "mean_value": float(arr.mean()),
                "sha256": hashlib.sha256(data).hexdigest(),
            })
    manifest = {
        "description": "reference preprocessing tensors; raw little-endian float32, CHW, row-major",
        "photos_dir": str(args.photos), "pipeline": "PIL open, ImageOps.exif_transpose, convert('RGB'), "
        "Resize(resize, BILINEAR, antialias=True), CenterCrop(crop), ToTensor(), Normalize(mean, std)",
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__, "pillow": PIL.__version__},
        "variants": {k: {"dir": v[0] or ".", "resize": v[1], "crop": v[2], "mean": v[3], "std": v[4]}
                     for k, v in VARIANTS.items()},
        "entries": entries,
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"preprocess_reference: {len(entries)} tensors ({len(photos)} photos x {len(VARIANTS)} variants) "
          f"in {args.out} in {time.monotonic() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
