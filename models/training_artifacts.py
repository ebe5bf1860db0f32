#!/usr/bin/env python3
"""Write ONNX Runtime training artifacts for fine-tuning a Wide ResNet with `wrn train`.

    python models/training_artifacts.py --arch wrn-16-1 --num-classes 10 --out art/
    python models/training_artifacts.py --arch wide_resnet50_2 --weights IMAGENET1K_V2 --num-classes 5 --out art/
    python models/export.py --training-artifacts --arch wrn-16-4 --num-classes 10 --out art/   (same thing)

OUT gets what `wrn train --artifacts OUT` reads:

    training_model.onnx   inputs: input f32[batch,3,H,W], labels i64[batch] (+ parameters);
                          outputs: loss, logits, then the new BatchNorm running statistics
    eval_model.onnx       inputs: input, labels; outputs: loss, logits (BatchNorm/dropout in eval mode)
    optimizer_model.onnx  AdamW (default) or plain SGD
    checkpoint            parameters + optimizer state (ORT flatbuffer)
    export_meta.json      input size, mean/std, resize/crop, classes, architecture, which outputs
                          update which BatchNorm statistics: what `wrn train` needs to write the
                          serving config.toml

How it is made, in two steps with two Python environments (the pins do not mix):
 1. In the main venv (.venv: torch, torchvision): the model (models/export.py's builder: torchvision
    WRN, pretrained with --weights when the weights are reachable, otherwise seeded + calibrated;
    or the CIFAR WRN-d-k of models/wrn_cifar.py with --dropout), a new seeded head of N classes,
    exported with PyTorch's TorchScript ONNX exporter in TRAINING mode (BatchNorm training_mode=1,
    Dropout active), without constant folding, parameters keeping their state_dict names.
 2. In the training venv (.cache/ort-training/venv: onnxruntime-training-cpu==1.19.2 + onnx==1.16.2,
    see deploy/ort-training/requirements-artifacts.txt; newer onnx writes IR versions ORT 1.21
    rejects): onnxruntime.training.artifacts.generate_artifacts with cross-entropy loss.
    This script re-runs itself there (--artifacts-python picks the interpreter).

Trainable layers (--train-layers): `last` (default) = the last stage and the head (torchvision
WRNs: layer4 + fc; CIFAR WRNs: block3 + the final BatchNorm + fc); `head` = fc only; `all`.
BatchNorm layers outside the trainable part run in eval mode (frozen statistics, as in usual
transfer learning); the trainable ones normalise with batch statistics while training.

BatchNorm running statistics. ONNX Runtime's training API never writes back a BatchNorm's running
mean/variance (microsoft/onnxruntime#19370): they are not parameters the optimizer updates. So the
training graph also outputs each trainable BatchNorm's updated running mean/var (the node's outputs
1 and 2, momentum 0.9 as in PyTorch), export_meta.json pairs each such output with its checkpoint
entry, and `wrn train` copies them into the checkpoint after every step (UpdateParameter). The eval
graph and the exported inference graph then use statistics that follow the training.

Optimizer. The reference training recipe (WRN paper) is SGD with Nesterov momentum 0.9. ONNX
Runtime's artifacts cannot express momentum: OptimType has only AdamW and SGD, and SGD is plain
SGD (the SGDOptimizerV2 kernel, no momentum or weight decay state); the training API's Optimizer
only recognises those two graphs. So the default is AdamW (betas 0.9/0.999, eps 1e-6, weight
decay --weight-decay, default 1e-4... applied decoupled), the closest supported optimizer with
momentum; --optimizer sgd gives plain SGD.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

DEFAULT_ARTIFACTS_PYTHON = ROOT / ".cache" / "ort-training" / "venv" / "bin" / "python"
FORWARD_FILE = "forward_training.onnx"  # step 1 -> step 2 hand-over (deleted at the end)
STAGE_FILE = "stage1.json"
META_FILE = "export_meta.json"
OPSET = 17  # ORT 1.21 training kernels and onnx 1.16.2 both cover it
TRAIN_LAYERS = ("last", "head", "all")


class ArtifactsError(Exception):
    """A problem the user can act on; printed without a traceback."""


# ---------------------------------------------------------------------------------------------
# Step 1: PyTorch model -> training-mode ONNX graph (main venv)


def trainable_prefixes(arch: str, which: str) -> list[str] | None:
    """state_dict name prefixes that train; None means every parameter."""
    if which == "all":
        return None
    if which == "head":
        return ["fc."]
    if arch.startswith("wrn-"):
        return ["block3.", "bn.", "fc."]
    return ["layer4.", "fc."]


def build_torch_model(args: argparse.Namespace):
    """The backbone from export.py's builder, with a new seeded head of --num-classes outputs."""
    import torch
    from torch import nn

    import export

    ns = argparse.Namespace(arch=args.arch, seed=args.seed, weights=args.weights, weights_file=args.weights_file,
                            init="calibrated", num_classes=None, dropout=args.dropout, opset=OPSET, name=args.name)
    try:
        spec = export.make_spec(ns)
        model = export.build_model(spec)
    except export.ExportError as e:
        raise ArtifactsError(str(e)) from e
    torch.manual_seed(args.seed + 7919)  # the new head
    in_features = model.fc.in_features
    model.fc = nn.Linear(in_features, args.num_classes)
    nn.init.zeros_(model.fc.bias)
    return spec, model


def export_training_graph(args: argparse.Namespace, out: Path) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    spec, model = build_torch_model(args)
    model.train()
    prefixes = trainable_prefixes(spec.arch, args.train_layers)
    names = [n for n, _ in model.named_parameters()]
    trainable = [n for n in names if prefixes is None or any(n.startswith(p) for p in prefixes)]
    example = torch.randn(2, 3, spec.crop, spec.crop)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (example,), str(out / FORWARD_FILE), dynamo=False, export_params=True,
            training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False, opset_version=OPSET,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    pretrained = bool(spec.weights or spec.weights_file)
    labels = args.labels or [f"class_{i}" for i in range(args.num_classes)]
    return {
        "format": 1,
        "name": args.name or f"{spec.name}_finetuned",
        "architecture": spec.arch,
        "base_weights": spec.weights_label,
        "pretrained": pretrained,
        "seed": args.seed,
        "dropout": args.dropout,
        "num_classes": args.num_classes,
        "labels": labels,
        "train_layers": args.train_layers,
        "trainable": trainable,
        "parameters": names,
        "preprocess": {"resize": spec.resize, "crop": spec.crop, "interpolation": "bilinear",
                       "mean": list(spec.mean), "std": list(spec.std)},
        "max_batch_size": spec.max_batch_size,
        "input": "input",
        "labels_input": "labels",
        "logits": "logits",
        "optimizer": args.optimizer,
        "weight_decay": args.weight_decay if args.optimizer == "adamw" else 0.0,
        "torch": torch.__version__,
    }


# ---------------------------------------------------------------------------------------------
# Step 2: training-mode graph -> ORT artifacts (training venv)


def import_artifacts():
    """onnxruntime.training.artifacts without the package __init__ (which imports torch)."""
    import onnxruntime

    training_dir = os.path.join(os.path.dirname(onnxruntime.__file__), "training")
    if "onnxruntime.training" not in sys.modules:
        pkg = types.ModuleType("onnxruntime.training")
        pkg.__path__ = [training_dir]
        sys.modules["onnxruntime.training"] = pkg
    from onnxruntime.training import artifacts

    return artifacts


def prepare_graph(model, trainable: set[str]) -> list[tuple[str, str]]:
    """Frozen BatchNorms -> eval mode; trainable BatchNorms keep training mode and their updated
    running statistics become graph outputs. Returns (output name, checkpoint entry) pairs."""
    from onnx import helper

    updates = []
    for node in model.graph.node:
        if node.op_type != "BatchNormalization":
            continue
        mode = next((a for a in node.attribute if a.name == "training_mode"), None)
        if node.input[1] in trainable:
            if len(node.output) >= 3:
                updates += [(node.output[1], node.input[3]), (node.output[2], node.input[4])]
        else:
            if mode is not None:
                mode.i = 0
            del node.output[1:]
    # graph outputs need type info; running stats are 1-D f32 of the channel count
    inits = {i.name: i for i in model.graph.initializer}
    for out_name, param in updates:
        model.graph.output.append(helper.make_tensor_value_info(out_name, 1, list(inits[param].dims)))
    return updates


def fix_eval_model(path: Path, drop_outputs: set[str]) -> None:
    """The eval graph: BatchNorm in eval mode has a single output; no statistic outputs."""
    import onnx

    m = onnx.load(str(path))
    for node in m.graph.node:
        if node.op_type == "BatchNormalization":
            del node.output[1:]
    keep = [o for o in m.graph.output if o.name not in drop_outputs]
    del m.graph.output[:]
    m.graph.output.extend(keep)
    onnx.save(m, str(path))


def generate(out: Path, verbose: bool) -> dict:
    import onnx

    meta = json.loads((out / STAGE_FILE).read_text())
    artifacts = import_artifacts()
    model = onnx.load(str(out / FORWARD_FILE))
    model.ir_version = min(model.ir_version, 8)
    trainable = set(meta["trainable"])
    init_names = [i.name for i in model.graph.initializer]
    missing = sorted(trainable - set(init_names))
    if missing:
        raise ArtifactsError(f"trainable parameters missing from the exported graph: {missing[:5]}")
    frozen = [n for n in init_names if n not in trainable]
    updates = prepare_graph(model, trainable)
    extra_outputs = ["logits"] + [o for o, _ in updates]
    if meta["optimizer"] == "adamw":
        from onnxruntime.training import onnxblock

        optimizer = onnxblock.optim.AdamW(weight_decay=meta["weight_decay"])
    else:
        optimizer = artifacts.OptimType.SGD

    saved_fd = None
    if not verbose:  # the gradient builder logs every graph transformer at INFO on fd 2
        sys.stderr.flush()
        saved_fd = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
    try:
        artifacts.generate_artifacts(
            model,
            requires_grad=[n for n in init_names if n in trainable],
            frozen_params=frozen,
            loss=artifacts.LossType.CrossEntropyLoss,
            optimizer=optimizer,
            artifact_directory=str(out),
            additional_output_names=extra_outputs,
            loss_input_names=["logits"],
        )
    finally:
        if saved_fd is not None:
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
    fix_eval_model(out / "eval_model.onnx", {o for o, _ in updates})

    train = onnx.load(str(out / "training_model.onnx"), load_external_data=False)
    ev = onnx.load(str(out / "eval_model.onnx"), load_external_data=False)
    train_outputs = [o.name for o in train.graph.output]
    meta.update({
        "loss": train_outputs[0],
        "train_outputs": train_outputs,
        "eval_outputs": [o.name for o in ev.graph.output],
        "bn_stat_updates": [{"output": o, "parameter": p} for o, p in updates],
        "trainable_count": len(trainable),
        "frozen_count": len(frozen),
        "generator": "onnxruntime-training-cpu==1.19.2 onnx==1.16.2",
    })
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    (out / FORWARD_FILE).unlink()
    (out / STAGE_FILE).unlink()
    return meta


# ---------------------------------------------------------------------------------------------
# CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared with `export.py --training-artifacts`."""
    p.add_argument("--train-layers", choices=TRAIN_LAYERS, default="last",
                   help="what trains: last stage + head (default), head only, or all")
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw",
                   help="adamw (default; ORT artifacts cannot express SGD momentum) or plain sgd")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="AdamW decoupled weight decay (default 5e-4)")
    p.add_argument("--labels", type=lambda s: [x for x in s.split(",") if x],
                   help="comma-separated class names (default class_0..; wrn train uses the data folders' names)")
    p.add_argument("--artifacts-python", type=Path, default=DEFAULT_ARTIFACTS_PYTHON,
                   help="Python with onnxruntime-training-cpu==1.19.2 + onnx==1.16.2 "
                   "(default .cache/ort-training/venv/bin/python)")
    p.add_argument("--verbose-artifacts", action="store_true", help="keep ORT's graph-transformer log")


def build(args: argparse.Namespace) -> int:
    """Both steps; args has arch, weights, weights_file, seed, num_classes, dropout, name, out,
    threads and the add_arguments() options."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.num_classes or args.num_classes < 2:
        raise ArtifactsError("--num-classes must be at least 2 for a classification head")
    if args.labels and len(args.labels) != args.num_classes:
        raise ArtifactsError(f"--labels names {len(args.labels)} classes but --num-classes is {args.num_classes}")
    if not Path(args.artifacts_python).is_file():
        raise ArtifactsError(f"{args.artifacts_python} does not exist: make the training venv with "
                             "python3 -m venv .cache/ort-training/venv && .cache/ort-training/venv/bin/pip install "
                             "-r deploy/ort-training/requirements-artifacts.txt")
    print(f"exporting {args.arch} in training mode ({args.train_layers} trainable, {args.num_classes} classes) -> {out}")
    stage = export_training_graph(args, out)
    (out / STAGE_FILE).write_text(json.dumps(stage, indent=2))
    cmd = [str(args.artifacts_python), str(Path(__file__).resolve()), "--stage2", str(out)]
    if args.verbose_artifacts:
        cmd.append("--verbose-artifacts")
    r = subprocess.run(cmd)
    if r.returncode != 0:
        raise ArtifactsError(f"generating the artifacts failed ({' '.join(cmd)} exited {r.returncode})")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--stage2":
        out = Path(argv[1])
        try:
            meta = generate(out, "--verbose-artifacts" in argv)
        except ArtifactsError as e:
            print(f"training_artifacts.py: error: {e}", file=sys.stderr)
            return 1
        for name in sorted(os.listdir(out)):
            print(f"  {name} {os.path.getsize(out / name)} bytes")
        print(f"  {meta['trainable_count']} trainable / {meta['frozen_count']} frozen tensors, optimizer "
              f"{meta['optimizer']}, {len(meta['bn_stat_updates']) // 2} BatchNorm statistics followed")
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--arch", required=True, help="wide_resnet50_2 | wide_resnet101_2 | wrn-D-K")
    p.add_argument("--weights", help="torchvision pretrained weights (e.g. IMAGENET1K_V2), when reachable")
    p.add_argument("--weights-file", help="local state_dict to start from")
    p.add_argument("--seed", type=int, default=0, help="seed of the random init and the new head")
    p.add_argument("--num-classes", type=int, required=True, help="classes of the new head")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout in WRN-D-K blocks (active while training)")
    p.add_argument("--name", help="model name written into the served config (default <arch>_finetuned)")
    p.add_argument("--out", type=Path, required=True, help="artifacts directory")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return build(args)
    except ArtifactsError as e:
        print(f"training_artifacts.py: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
