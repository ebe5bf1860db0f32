#!/usr/bin/env python3
"""Write scikit-learn's `digits` (1797 8x8 grey images of 0-9, bundled, no download) as PNG folders
for `wrn train` tests:

    OUT/train/<digit>/<index>.png     what `wrn train --data` reads (it splits its own held-out part)
    OUT/heldout/<digit>/<index>.png   never trained on: classified through `wrn serve` afterwards

Each image is upscaled to --size (default 32) RGB with bilinear resampling (grey in all three
channels, 0..16 scaled to 0..255). The held-out set is every --heldout-every-th image (default 10th).

Usage: make_digits.py OUT [--size 32] [--heldout-every 10]
"""
import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--heldout-every", type=int, default=10)
    args = ap.parse_args()
    digits = load_digits()
    counts = {"train": 0, "heldout": 0}
    for i, (img, label) in enumerate(zip(digits.images, digits.target)):
        part = "heldout" if i % args.heldout_every == 0 else "train"
        grey = Image.fromarray(np.clip(img * (255.0 / 16.0), 0, 255).astype(np.uint8), mode="L")
        rgb = grey.resize((args.size, args.size), Image.BILINEAR).convert("RGB")
        folder = args.out / part / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        rgb.save(folder / f"{i:04d}.png")
        counts[part] += 1
    print(f"wrote {counts['train']} training and {counts['heldout']} held-out digits to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
