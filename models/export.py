#!/usr/bin/env python3
"""Export a Wide ResNet to an ONNX model directory the wrn server can load.

    models/repository/<name>/model.onnx    opset 18, input "input" [batch,3,H,W] f32,
                                           output "logits" [batch,num_classes] f32 (no softmax)
    models/repository/<name>/config.toml   the server's model config (see the conventions)
    models/repository/<name>/labels.txt    one label per line, line i = class i

Architectures: torchvision's wide_resnet50_2 / wide_resnet101_2 (224x224 ImageNet) and the
CIFAR-style WRN-d-k family (wrn-16-4, wrn-28-10, ...; 32x32 input; models/wrn_cifar.py).

Weights: --weights IMAGENET1K_V2 loads torchvision's pretrained weights (needs the download or a
cached copy in ~/.cache/torch/hub); --weights-file loads a local state_dict; otherwise the model
gets seeded random weights, which is what every test uses:

  --init calibrated (default): torch.manual_seed(seed), the model's own initialisation
      (torchvision's for the ImageNet WRNs, with its zero_init_residual=True option), then a
      deterministic calibration on a fixed batch of scikit-image sample photos (bundled, no
      download): the BatchNorm running statistics are set to that batch's statistics, and the
      final fc layer is rescaled and re-biased so the logits over the batch have zero mean per
      class and standard deviation 2.
  --init raw: the model's own initialisation only, uncalibrated (weights label "... init=raw").

Why calibrate. Raw torchvision init is useless for tests: BN running stats of 0/1 let the
residual stream grow with depth (max |logit| ~80 for WRN-50-2, ~1e5 for WRN-101-2, where float32
rounding alone exceeds the 1e-3 check) and one direction dominates: every photo gets the same
top-5. Calibrating the BN stats alone makes a deep random net chaotic instead: a +-1/255 change
of the input pixels (the gap between two correct resize implementations) reorders the top-5.
Zeroing the last BN scale of each bottleneck (zero_init_residual) keeps the network smooth: the
residual branches are still computed (same graph, same cost) but start at zero, as in torchvision's
own option. Measured on models/photos with WRN-50-2: 9 of 11 photos get distinct top-1 classes;
a float (unrounded) resize instead of PIL's changes logits by <= 0.06 and keeps every top-1.
The CIFAR WRN-16-4 (pre-activation, shallow) is smooth without it and keeps its plain init.

The export is checked against PyTorch with onnxruntime on a random batch of 2: it fails when the
max abs diff exceeds 1e-3 AND the diff relative to the largest |logit| exceeds 1e-4 (the relative
limit only matters for --init raw, whose WRN-101-2 logits reach ~1e5; calibrated models agree to
~2e-5).

Examples:
    python models/export.py --arch wide_resnet50_2 --random-init --seed 0
    python models/export.py --arch wide_resnet101_2 --weights IMAGENET1K_V2
    python models/export.py --arch wrn-16-4 --dropout 0.3 --seed 1
    python models/export.py --all-defaults        # the three test models, skipped when current
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

DEFAULT_REPOSITORY = HERE / "repository"
IMAGENET_ARCHS = ("wide_resnet50_2", "wide_resnet101_2")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DEFAULT_SEED = 0
TOLERANCE = 1e-3        # max abs diff PyTorch vs onnxruntime ...
REL_TOLERANCE = 1e-4    # ... unless small relative to the largest |logit|
LOGIT_STD = 2.0  # target spread of calibrated logits (pretrained ImageNet models are of this order)
# Bundled scikit-image samples used to calibrate random-init models (a superset of models/photos).
CALIBRATION_IMAGES = ("astronaut", "chelsea", "coffee", "rocket", "camera", "hubble_deep_field",
                      "immunohistochemistry", "coins", "stereo_motorcycle", "colorwheel", "brick",
                      "grass", "gravel", "clock", "moon", "page")
METADATA_KEY = "wrn.export"  # ONNX metadata_props entry recording how the file was made


class ExportError(Exception):
    """A problem the user can act on; printed without a traceback."""


@dataclass
class Spec:
    """Everything that determines an exported model directory."""

    arch: str                      # wide_resnet50_2 | wide_resnet101_2 | wrn-D-K (canonical)
    name: str                      # repository directory / config name
    weights: str | None            # torchvision weights name, or None for random init
    weights_file: str | None
    seed: int
    init: str                      # calibrated | raw (random init only)
    num_classes: int
    dropout: float
    opset: int
    resize: int
    crop: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    max_batch_size: int
    labels: list[str] = field(repr=False)

    @property
    def is_cifar(self) -> bool:
        return self.arch not in IMAGENET_ARCHS

    @property
    def weights_label(self) -> str:
        if self.weights_file:
            return f"{self.weights or 'file'} ({Path(self.weights_file).name})"
        if self.weights:
            return self.weights
        return f"random-init seed={self.seed}" + ("" if self.init == "calibrated" else f" init={self.init}")

    def provenance(self) -> dict:
        record = {
            "arch": self.arch, "weights": self.weights_label, "seed": self.seed,
            "init": "pretrained" if (self.weights or self.weights_file) else self.init,
            "num_classes": self.num_classes, "dropout": self.dropout, "opset": self.opset,
            "format": 2,
        }
        if self.weights_file:
            record["weights_file_sha256"] = _sha256(self.weights_file)
        return record


def _sha256(path: str) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Spec construction


def imagenet_transform(arch: str, weights_name: str) -> tuple[int, int]:
    """(resize, crop) of torchvision's eval transform for these weights, read from the enum."""
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(arch)
        w = enum[weights_name]
    except (KeyError, ValueError) as e:
        names = ", ".join(m.name for m in torchvision.models.get_model_weights(arch))
        raise ExportError(f"unknown weights {weights_name!r} for {arch}; choose one of: {names}") from e
    t = w.transforms()
    return int(t.resize_size[0]), int(t.crop_size[0])


def imagenet_labels() -> list[str]:
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    assert len(_IMAGENET_CATEGORIES) == 1000
    return list(_IMAGENET_CATEGORIES)


def make_spec(args: argparse.Namespace, arch: str | None = None, seed: int | None = None) -> Spec:
    from wrn_cifar import canonical_name, parse_arch

    arch = (arch or args.arch).strip()
    seed = args.seed if seed is None else seed
    if arch.lower() in IMAGENET_ARCHS:
        arch = arch.lower()
        num_classes = args.num_classes or 1000
        # Seeded models use the V2 weights' transform (resize 232), as the conventions fix.
        resize, crop = imagenet_transform(arch, args.weights or "IMAGENET1K_V2")
        if num_classes == 1000:
            labels = imagenet_labels()
        else:
            if args.weights and not args.weights_file:
                raise ExportError("--num-classes other than 1000 cannot be used with pretrained ImageNet weights")
            labels = [f"class_{i}" for i in range(num_classes)]
        if args.dropout:
            raise ExportError("--dropout applies only to CIFAR-style wrn-D-K architectures")
        name = arch
        mean, std, max_batch = IMAGENET_MEAN, IMAGENET_STD, 16
    else:
        try:
            depth, width = parse_arch(arch)
        except ValueError as e:
            raise ExportError(f"{e}; or use one of {', '.join(IMAGENET_ARCHS)}") from e
        if args.weights:
            raise ExportError(f"there are no torchvision pretrained weights for {arch}; use --random-init "
                              "or --weights-file with a trained state_dict")
        arch = f"wrn-{depth}-{width}"
        num_classes = args.num_classes or 10
        labels = list(CIFAR10_LABELS) if num_classes == 10 else [f"class_{i}" for i in range(num_classes)]
        name = canonical_name(depth, width)
        resize, crop, mean, std, max_batch = 32, 32, CIFAR10_MEAN, CIFAR10_STD, 64
    if args.name:
        name = args.name
    return Spec(arch=arch, name=name, weights=args.weights, weights_file=args.weights_file, seed=seed, init=args.init,
                num_classes=num_classes, dropout=args.dropout, opset=args.opset, resize=resize, crop=crop,
                mean=mean, std=std, max_batch_size=max_batch, labels=labels)


# ---------------------------------------------------------------------------------------------
# Files


def _floats(xs) -> str:
    return "[" + ", ".join(repr(float(x)) for x in xs) + "]"


def config_toml(spec: Spec) -> str:
    """The config.toml text; the key set is exactly the server's schema (unknown keys are errors)."""
    pretrained = "true" if (spec.weights or spec.weights_file) else "false"
    return f"""name = "{spec.name}"
version = "1"
architecture = "{spec.arch}"
weights = "{spec.weights_label}"
pretrained = {pretrained}
model_file = "model.onnx"
labels_file = "labels.txt"

[preprocess]
resize = {spec.resize}
crop = {spec.crop}
interpolation = "bilinear"
mean = {_floats(spec.mean)}
std = {_floats(spec.std)}

[batching]
max_batch_size = {spec.max_batch_size}
max_queue_delay_ms = 0
queue_capacity = 256
instances = 1

[runtime]
execution_providers = ["cpu"]
intra_op_threads = 2
inter_op_threads = 1
graph_optimization_level = "all"
"""


def labels_txt(spec: Spec) -> str:
    return "".join(f"{label}\n" for label in spec.labels)


def read_provenance(model_path: Path) -> dict | None:
    """The export record stored in the ONNX file's metadata, or None if absent/unreadable."""
    import onnx

    try:
        m = onnx.load(str(model_path), load_external_data=False)
    except Exception:
        return None
    for p in m.metadata_props:
        if p.key == METADATA_KEY:
            try:
                return json.loads(p.value)
            except ValueError:
                return None
    return None


def is_current(spec: Spec, out: Path) -> bool:
    model, cfg, labels = out / "model.onnx", out / "config.toml", out / "labels.txt"
    if not (model.is_file() and cfg.is_file() and labels.is_file()):
        return False
    if cfg.read_text() != config_toml(spec) or labels.read_text() != labels_txt(spec):
        return False
    return read_provenance(model) == spec.provenance()


# ---------------------------------------------------------------------------------------------
# Model


def build_model(spec: Spec):
    import torch
    import torchvision

    torch.manual_seed(spec.seed)
    if spec.is_cifar:
        from wrn_cifar import WideResNet, parse_arch

        depth, width = parse_arch(spec.arch)
        model = WideResNet(depth, width, num_classes=spec.num_classes, dropout=spec.dropout)
    elif spec.weights and not spec.weights_file:
        try:
            model = torchvision.models.get_model(spec.arch, weights=spec.weights)
        except Exception as e:  # network errors come in many types (URLError, OSError, ...)
            raise ExportError(
                f"could not load pretrained weights {spec.arch}/{spec.weights}: {e.__class__.__name__}: {e}\n"
                "  the weights are downloaded from download.pytorch.org into ~/.cache/torch/hub/checkpoints;\n"
                "  without network access copy the .pth file there, pass --weights-file PATH, "
                "or export with --random-init --seed N"
            ) from e
    else:
        # zero_init_residual: see "Why calibrate" in the module docstring.
        model = torchvision.models.get_model(spec.arch, weights=None, num_classes=spec.num_classes,
                                             zero_init_residual=spec.init == "calibrated")
    if spec.weights_file:
        try:
            state = torch.load(spec.weights_file, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ExportError(f"could not read --weights-file {spec.weights_file}: {e}") from e
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise ExportError(f"--weights-file {spec.weights_file} does not fit {spec.arch}: {e}") from e
    elif not spec.weights and spec.init == "calibrated":
        calibrate(model, spec)
    return model.eval()


def calibration_batch(spec: Spec):
    """Seeded, deterministic batch: each calibration image once with the eval transform and once
    as a random resized crop (with flip), normalised like the model's inputs."""
    import numpy as np
    import torch
    from PIL import Image
    from skimage import data
    from torchvision import transforms
    from torchvision.transforms import InterpolationMode

    norm = [transforms.ToTensor(), transforms.Normalize(spec.mean, spec.std)]
    center = transforms.Compose([transforms.Resize(spec.resize, interpolation=InterpolationMode.BILINEAR),
                                 transforms.CenterCrop(spec.crop), *norm])
    augment = transforms.Compose([transforms.RandomResizedCrop(spec.crop, scale=(0.25, 1.0)),
                                  transforms.RandomHorizontalFlip(), *norm])
    torch.manual_seed(spec.seed + 1)  # the random crops
    views = []
    for name in CALIBRATION_IMAGES:
        arr = getattr(data, name)()
        if isinstance(arr, tuple):  # stereo_motorcycle: (left, right, disparity)
            arr = arr[0]
        img = Image.fromarray(np.ascontiguousarray(arr)).convert("RGB")
        views += [center(img), augment(img)]
    return torch.stack(views)


def calibrate(model, spec: Spec) -> None:
    """Set BN running stats from a photo batch and standardise the logits (see --init)."""
    import torch
    from torch import nn

    x = calibration_batch(spec)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    model.eval()
    for bn in bns:  # only BN in train mode: dropout stays off
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: after one batch, exactly that batch's statistics
        bn.train()
    with torch.no_grad():
        model(x)
    model.eval()

    fc = model.fc
    captured = {}
    hook = fc.register_forward_hook(lambda _m, inputs, _out: captured.__setitem__("f", inputs[0]))
    with torch.no_grad():
        model(x)
    hook.remove()
    with torch.no_grad():
        logits = fc(captured["f"])
        mu = logits.mean(dim=0)
        scale = LOGIT_STD / float((logits - mu).std())
        fc.weight.mul_(scale)
        fc.bias.copy_((fc.bias - mu) * scale)


def export_onnx(model, spec: Spec, path: Path) -> None:
    import onnx
    import torch

    example = torch.randn(2, 3, spec.crop, spec.crop)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        tmp_path = Path(tmp) / "model.onnx"
        program = torch.onnx.export(
            model, (example,), dynamo=True, opset_version=spec.opset,
            input_names=["input"], output_names=["logits"],
            dynamic_shapes=({0: batch},), verbose=False,
        )
        program.save(str(tmp_path))
        # Single self-contained file (< 2 GB), fixed axis/metadata names, provenance recorded.
        proto = onnx.load(str(tmp_path), load_external_data=True)
        for vi in list(proto.graph.input) + list(proto.graph.output):
            dim0 = vi.type.tensor_type.shape.dim[0]
            dim0.ClearField("dim_value")
            dim0.dim_param = "batch"
        del proto.metadata_props[:]
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(spec.provenance(), sort_keys=True)
        proto.producer_name = "wrn models/export.py"
        proto.doc_string = f"{spec.arch} ({spec.weights_label}) exported with torch {torch.__version__}"
        if proto.ByteSize() >= 2**31 - 1:
            raise ExportError("model is larger than 2 GB; a single-file ONNX model cannot hold it")
        onnx.checker.check_model(proto, full_check=True)
        final_tmp = path.parent / (path.name + ".tmp")
        onnx.save_model(proto, str(final_tmp), save_as_external_data=False)
        os.replace(final_tmp, path)


def verify(model, spec: Spec, path: Path, threads: int) -> float:
    """Max abs diff between PyTorch and onnxruntime on a random batch of 2; also checks that the
    names, the dynamic batch axis, and batches of 1 and 3 work."""
    import numpy as np
    import onnxruntime as ort
    import torch

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ins, outs = sess.get_inputs(), sess.get_outputs()
    assert [i.name for i in ins] == ["input"] and [o.name for o in outs] == ["logits"], (ins, outs)
    assert ins[0].shape == ["batch", 3, spec.crop, spec.crop], ins[0].shape
    assert outs[0].shape == ["batch", spec.num_classes], outs[0].shape

    g = torch.Generator().manual_seed(1234)
    x = torch.randn(2, 3, spec.crop, spec.crop, generator=g)
    with torch.no_grad():
        ref = model(x).numpy()
    got = sess.run(["logits"], {"input": x.numpy()})[0]
    diff = float(np.max(np.abs(ref - got)))
    scale = float(np.max(np.abs(ref)))
    rel = diff / max(scale, 1e-12)
    print(f"  verify: onnxruntime vs PyTorch on a random batch of 2: max abs diff {diff:.3e}, "
          f"relative {rel:.2e} (max |logit| {scale:.3g}; limits {TOLERANCE:g} abs or {REL_TOLERANCE:g} rel)")
    for n in (1, 3):
        y = sess.run(["logits"], {"input": np.zeros((n, 3, spec.crop, spec.crop), np.float32)})[0]
        assert y.shape == (n, spec.num_classes), y.shape
    if not np.isfinite(got).all():
        raise ExportError("onnxruntime produced non-finite logits")
    if diff > TOLERANCE and rel > REL_TOLERANCE:
        raise ExportError(f"onnxruntime differs from PyTorch by {diff:.3e} (relative {rel:.2e}) > {TOLERANCE:g} "
                          f"(relative {REL_TOLERANCE:g}); not keeping {path}")
    return diff


def export(spec: Spec, out: Path, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    t0 = time.monotonic()
    print(f"exporting {spec.arch} ({spec.weights_label}, {spec.num_classes} classes, opset {spec.opset}) -> {out}")
    model = build_model(spec)
    out.mkdir(parents=True, exist_ok=True)
    params = sum(p.numel() for p in model.parameters())
    model_path = out / "model.onnx"
    try:
        export_onnx(model, spec, model_path)
        verify(model, spec, model_path, threads)
    except BaseException:
        model_path.unlink(missing_ok=True)  # never leave a half-checked model for the server
        raise
    (out / "labels.txt").write_text(labels_txt(spec))
    (out / "config.toml").write_text(config_toml(spec))
    size_mb = model_path.stat().st_size / 1e6
    print(f"  wrote model.onnx ({size_mb:.1f} MB, {params / 1e6:.2f}M params), config.toml, labels.txt "
          f"({len(spec.labels)} labels) in {time.monotonic() - t0:.1f}s")


# ---------------------------------------------------------------------------------------------
# CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--arch", help="wide_resnet50_2 | wide_resnet101_2 | wrn-D-K (e.g. wrn-16-4)")
    w = p.add_mutually_exclusive_group()
    w.add_argument("--weights", help="torchvision pretrained weights name, e.g. IMAGENET1K_V2 or IMAGENET1K_V1")
    w.add_argument("--random-init", action="store_true", help="seeded random weights (the default)")
    p.add_argument("--weights-file", help="local state_dict (.pth) to load; with --weights NAME the name "
                   "picks the preprocessing (e.g. a downloaded IMAGENET1K_V1 file)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed for the random init (default 0)")
    p.add_argument("--init", choices=("calibrated", "raw"), default="calibrated",
                   help="random init: calibrated (default; BN stats + logit scale from sample photos) "
                   "or raw: the model's own initialisation (torchvision's for the ImageNet WRNs)")
    p.add_argument("--num-classes", type=int, help="output classes (default 1000 ImageNet, 10 CIFAR)")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout between the convs of a WRN-D-K block "
                   "(inactive in the exported eval graph)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.add_argument("--out", type=Path, help="output directory (default models/repository/<name>)")
    p.add_argument("--name", help="model name in config.toml (default derived from the arch)")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="CPU threads (default 2)")
    p.add_argument("--force", action="store_true", help="re-export even when the directory is current")
    p.add_argument("--all-defaults", action="store_true", help="export wide_resnet50_2, wide_resnet101_2 "
                   "and wrn_16_4 with seed 0 into --repository, skipping those already current")
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY,
                   help="model repository for --all-defaults (default models/repository)")
    p.add_argument("--training-artifacts", action="store_true", help="write ONNX Runtime training artifacts "
                   "for `wrn train` into --out instead (models/training_artifacts.py; needs --num-classes)")
    import training_artifacts

    training_artifacts.add_arguments(p)
    args = p.parse_args(argv)
    if args.training_artifacts and (args.all_defaults or not args.out or not args.num_classes):
        p.error("--training-artifacts needs --arch, --num-classes and --out (and no --all-defaults)")
    if args.all_defaults:
        if args.arch or args.weights or args.weights_file or args.out or args.name or args.num_classes:
            p.error("--all-defaults takes no --arch/--weights/--weights-file/--out/--name/--num-classes")
    elif not args.arch:
        p.error("--arch is required (or use --all-defaults)")
    if args.weights_file and not Path(args.weights_file).is_file():
        p.error(f"--weights-file {args.weights_file} does not exist")
    if args.num_classes is not None and args.num_classes < 1:
        p.error("--num-classes must be >= 1")
    if not 0.0 <= args.dropout < 1.0:
        p.error("--dropout must be in [0, 1)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.monotonic()
    if args.training_artifacts:
        import training_artifacts

        try:
            return training_artifacts.build(args)
        except training_artifacts.ArtifactsError as e:
            print(f"export.py: error: {e}", file=sys.stderr)
            return 1
    try:
        if args.all_defaults:
            for arch in ("wide_resnet50_2", "wide_resnet101_2", "wrn-16-4"):
                spec = make_spec(args, arch=arch)
                out = args.repository / spec.name
                if not args.force and is_current(spec, out):
                    print(f"{spec.name}: up to date in {out} (use --force to re-export)")
                    continue
                export(spec, out, args.threads)
        else:
            spec = make_spec(args)
            out = args.out or DEFAULT_REPOSITORY / spec.name
            if not args.force and is_current(spec, out):
                print(f"{spec.name}: up to date in {out} (use --force to re-export)")
            else:
                export(spec, out, args.threads)
    except ExportError as e:
        print(f"export.py: error: {e}", file=sys.stderr)
        return 1
    print(f"done in {time.monotonic() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
