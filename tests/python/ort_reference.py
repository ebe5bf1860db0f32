#!/usr/bin/env python3
"""Reference answers for a model: onnxruntime run directly on the reference tensors of each photo.

    python tests/python/ort_reference.py --model models/repository/wide_resnet50_2 \
        --photos models/photos --out tests/data/generated/ort_wide_resnet50_2.json

The model's config.toml gives resize/crop/mean/std; each photo is preprocessed exactly as
preprocess_reference.py does (PIL + torchvision), run alone (batch 1) with the server's session
options, and the JSON lists per photo the top-k classes (index, label, softmax probability, logit),
the margin between the k-th and (k+1)-th probability (how robust a top-k comparison is), and the
full logits. It also runs all photos as one batch and records the largest difference from the
batch-1 results, which bounds what dynamic batching may change.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from preprocess_reference import list_photos, preprocess  # noqa: E402


def session(model_path: Path, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])


def softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="model directory (config.toml, model.onnx, labels.txt)")
    p.add_argument("--photos", type=Path, default=Path("models/photos"))
    p.add_argument("--out", type=Path, required=True, help="output JSON file")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-logits", action="store_true", help="leave the full logits out of the JSON")
    args = p.parse_args(argv)
    t0 = time.monotonic()

    cfg_path = args.model / "config.toml"
    if not cfg_path.is_file():
        raise SystemExit(f"{cfg_path} not found; export the model first (python models/export.py --all-defaults)")
    cfg = tomllib.loads(cfg_path.read_text())
    pre = cfg["preprocess"]
    labels = (args.model / cfg["labels_file"]).read_text().splitlines()
    sess = session(args.model / cfg["model_file"], args.threads)

    photos = list_photos(args.photos)
    tensors = np.stack([preprocess(ph, pre["resize"], pre["crop"], pre["mean"], pre["std"]) for ph in photos])
    single = np.concatenate([sess.run(["logits"], {"input": tensors[i:i + 1]})[0] for i in range(len(photos))])
    batched = sess.run(["logits"], {"input": tensors})[0]
    batch_diff = float(np.max(np.abs(single - batched)))
    probs = softmax(single)
    k = min(args.top_k, probs.shape[1])

    entries, top1 = [], []
    for i, photo in enumerate(photos):
        order = np.argsort(-probs[i], kind="stable")
        top = [{"index": int(j), "label": labels[j], "prob": float(probs[i, j]), "logit": float(single[i, j])}
               for j in order[:k]]
        margin = float(probs[i, order[k - 1]] - probs[i, order[k]]) if k < probs.shape[1] else None
        entry = {"photo": photo.name, "top_k": top, "topk_margin": margin,
                 "max_prob": float(probs[i].max()), "min_prob": float(probs[i].min())}
        if not args.no_logits:
            entry["logits"] = [float(v) for v in single[i]]
        entries.append(entry)
        top1.append(int(order[0]))

    result = {
        "model": cfg["name"], "model_dir": str(args.model), "weights": cfg["weights"],
        "onnxruntime": ort.__version__, "top_k": k,
        "preprocess": {key: pre[key] for key in ("resize", "crop", "interpolation", "mean", "std")},
        "batch_vs_single_max_abs_diff": batch_diff,
        "distinct_top1": len(set(top1)),
        "entries": entries,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"ort_reference: {cfg['name']}: {len(photos)} photos, {len(set(top1))} distinct top-1, "
          f"min top-{k} margin {min(e['topk_margin'] or 1 for e in entries):.2e}, "
          f"batch-vs-single diff {batch_diff:.2e} -> {args.out} in {time.monotonic() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
