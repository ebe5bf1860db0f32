#!/usr/bin/env python3
"""Write ONNX Runtime on-device training artifacts for a tiny MLP (AdamW, cross-entropy).

Usage: make_tiny_artifacts.py OUT_DIR [--features 4] [--hidden 16] [--classes 3] [--check]

--check then trains 30 AdamW steps on a separable toy set with the wheel's own ONNX Runtime (1.19.2)
and fails unless the loss halves (here: 1.63 -> 0.07).

Needs the pinned venv from deploy/ort-training/requirements-artifacts.txt
(onnxruntime-training-cpu==1.19.2 + onnx==1.16.2; build.sh --venv makes it at
.cache/ort-training/venv). torch is NOT needed: the package's own __init__ imports torch
(for ORTModule), so this script loads only the `artifacts`/`onnxblock` submodules.

OUT_DIR gets:
  training_model.onnx   inputs: input f32[batch, F], labels i64[batch]; output: onnx::loss::... (scalar f32)
  eval_model.onnx       same inputs/outputs as the training model (no gradients)
  optimizer_model.onnx  AdamW
  checkpoint            parameters + optimizer state (ORT flatbuffer checkpoint)
  model.onnx            the forward model (input -> logits f32[batch, C])
  meta.json             names, shapes and the numbers used, for tests
These are exactly the names `ort::training::Trainer::new_from_artifacts` expects.
onnx==1.16.2 is pinned because newer onnx writes IR version 11+ which ORT 1.21 rejects.
"""
import argparse
import json
import os
import sys
import types

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def import_artifacts():
    """Import onnxruntime.training.artifacts without the package __init__ (which imports torch)."""
    import onnxruntime

    training_dir = os.path.join(os.path.dirname(onnxruntime.__file__), "training")
    if "onnxruntime.training" not in sys.modules:
        pkg = types.ModuleType("onnxruntime.training")
        pkg.__path__ = [training_dir]
        sys.modules["onnxruntime.training"] = pkg
    from onnxruntime.training import artifacts

    return artifacts


def build_mlp(features: int, hidden: int, classes: int, seed: int) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((features, hidden)) * np.sqrt(2.0 / features)).astype(np.float32)
    b1 = np.zeros((hidden,), np.float32)
    w2 = (rng.standard_normal((hidden, classes)) * np.sqrt(1.0 / hidden)).astype(np.float32)
    b2 = np.zeros((classes,), np.float32)
    inits = [
        numpy_helper.from_array(w1, "fc1.weight"),
        numpy_helper.from_array(b1, "fc1.bias"),
        numpy_helper.from_array(w2, "fc2.weight"),
        numpy_helper.from_array(b2, "fc2.bias"),
    ]
    nodes = [
        helper.make_node("MatMul", ["input", "fc1.weight"], ["h0"], name="fc1_matmul"),
        helper.make_node("Add", ["h0", "fc1.bias"], ["h1"], name="fc1_add"),
        helper.make_node("Relu", ["h1"], ["h2"], name="relu"),
        helper.make_node("MatMul", ["h2", "fc2.weight"], ["h3"], name="fc2_matmul"),
        helper.make_node("Add", ["h3", "fc2.bias"], ["logits"], name="fc2_add"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="wrn")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def toy_batch(features: int, classes: int, batch: int = 12):
    """Class c has feature c at 2.0 plus a little fixed offset; the same set train_smoke.c uses in spirit."""
    y = np.arange(batch) % classes
    x = np.zeros((batch, features), np.float32)
    x[np.arange(batch), y % features] = 2.0
    x += 0.05 * ((np.arange(batch)[:, None] * 7 + np.arange(features)[None, :] * 3) % 5)
    return x.astype(np.float32), y.astype(np.int64)


def check(out_dir: str, features: int, classes: int) -> bool:
    from onnxruntime.training.api import CheckpointState, Module, Optimizer

    state = CheckpointState.load_checkpoint(os.path.join(out_dir, "checkpoint"))
    module = Module(os.path.join(out_dir, "training_model.onnx"), state, os.path.join(out_dir, "eval_model.onnx"))
    optimizer = Optimizer(os.path.join(out_dir, "optimizer_model.onnx"), module)
    optimizer.set_learning_rate(0.01)
    x, y = toy_batch(features, classes)
    module.train()
    losses = []
    for _ in range(30):
        losses.append(float(module(x, y)))
        optimizer.step()
        module.lazy_reset_grad()
    module.eval()
    eval_loss = float(module(x, y))
    ok = losses[-1] < 0.5 * losses[0]
    print(f"{'PASS' if ok else 'FAIL'}: loss {losses[0]:.4f} -> {losses[-1]:.4f} in 30 steps, eval {eval_loss:.4f}")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--features", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verbose", action="store_true", help="keep ORT's INFO log of every graph transformer")
    ap.add_argument("--check", action="store_true", help="train 30 steps with the wheel's runtime; fail unless the loss halves")
    args = ap.parse_args()

    artifacts = import_artifacts()
    os.makedirs(args.out_dir, exist_ok=True)
    model = build_mlp(args.features, args.hidden, args.classes, args.seed)
    onnx.save(model, os.path.join(args.out_dir, "model.onnx"))

    params = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    # the C++ gradient builder logs each graph transformer at INFO on fd 2; silence it unless --verbose
    saved_fd = None
    if not args.verbose:
        sys.stderr.flush()
        saved_fd = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
    try:
        artifacts.generate_artifacts(
            model,
            requires_grad=params,
            frozen_params=[],
            loss=artifacts.LossType.CrossEntropyLoss,
            optimizer=artifacts.OptimType.AdamW,
            artifact_directory=args.out_dir,
        )
    finally:
        if saved_fd is not None:
            os.dup2(saved_fd, 2)
            os.close(saved_fd)

    train = onnx.load(os.path.join(args.out_dir, "training_model.onnx"))
    meta = {
        "features": args.features,
        "hidden": args.hidden,
        "classes": args.classes,
        "seed": args.seed,
        "params": params,
        "train_inputs": [i.name for i in train.graph.input],
        "train_outputs": [o.name for o in train.graph.output],
        # what TrainStep/EvalStep take, in this order (the rest are parameters/state in the checkpoint)
        "user_inputs": ["input", "labels"],
        "loss_output": train.graph.output[0].name,
        "ir_version": train.ir_version,
        "opsets": {o.domain or "ai.onnx": o.version for o in train.opset_import},
        "generator": "onnxruntime-training-cpu==1.19.2 onnx==1.16.2",
    }
    with open(os.path.join(args.out_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
    for name in sorted(os.listdir(args.out_dir)):
        print(os.path.join(args.out_dir, name), os.path.getsize(os.path.join(args.out_dir, name)))
    print("train inputs:", meta["train_inputs"], "outputs:", meta["train_outputs"])
    if args.check and not check(args.out_dir, args.features, args.classes):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
