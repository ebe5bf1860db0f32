"""Unit tests for the Python model tooling (stdlib unittest; no extra dependencies).

    .venv/bin/python -m unittest discover -s tests/python -v

Fast: the only export is a tiny WRN-10-1 (seconds). The big models are checked by
models/export.py itself (onnxruntime vs PyTorch) when they are exported.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import tempfile
import tomllib
import unittest
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "models"))
sys.path.insert(0, str(ROOT / "tests" / "python"))

import export  # noqa: E402
import wrn_cifar  # noqa: E402

# The server's schema (src/config.rs, deny_unknown_fields): every key export.py writes must be here.
SCHEMA = {
    "": {"name", "version", "architecture", "weights", "pretrained", "model_file", "labels_file",
         "preprocess", "batching", "runtime"},
    "preprocess": {"resize", "crop", "interpolation", "mean", "std"},
    "batching": {"max_batch_size", "max_queue_delay_ms", "queue_capacity", "instances"},
    "runtime": {"execution_providers", "intra_op_threads", "inter_op_threads", "graph_optimization_level"},
}


def spec_for(*argv: str) -> export.Spec:
    return export.make_spec(export.parse_args(list(argv)))


class ArchTests(unittest.TestCase):
    def test_parse_arch(self):
        self.assertEqual(wrn_cifar.parse_arch("wrn-16-4"), (16, 4))
        self.assertEqual(wrn_cifar.parse_arch("WRN_28_10"), (28, 10))
        for bad in ("wrn-15-4", "wrn-16", "resnet50", "wrn-4-1", "wrn-16-0"):
            with self.assertRaises(ValueError, msg=bad):
                wrn_cifar.parse_arch(bad)

    def test_wrn_shapes_and_params(self):
        import torch

        m = wrn_cifar.WideResNet(16, 4).eval()
        self.assertAlmostEqual(sum(p.numel() for p in m.parameters()) / 1e6, 2.75, places=2)  # paper: 2.7M
        with torch.no_grad():
            self.assertEqual(tuple(m(torch.zeros(3, 3, 32, 32)).shape), (3, 10))

    def test_seeded_init_is_deterministic(self):
        import torch

        torch.manual_seed(5)
        a = wrn_cifar.WideResNet(10, 1).state_dict()
        torch.manual_seed(5)
        b = wrn_cifar.WideResNet(10, 1).state_dict()
        for k in a:
            self.assertTrue(torch.equal(a[k], b[k]), k)


class ConfigTests(unittest.TestCase):
    def check_schema(self, text: str):
        cfg = tomllib.loads(text)
        self.assertEqual(set(cfg), SCHEMA[""])
        for table in ("preprocess", "batching", "runtime"):
            self.assertEqual(set(cfg[table]), SCHEMA[table], table)
        return cfg

    def test_imagenet_seeded_uses_v2_transform(self):
        cfg = self.check_schema(export.config_toml(spec_for("--arch", "wide_resnet50_2")))
        self.assertEqual(cfg["name"], "wide_resnet50_2")
        self.assertEqual(cfg["weights"], "random-init seed=0")
        self.assertFalse(cfg["pretrained"])
        self.assertEqual((cfg["preprocess"]["resize"], cfg["preprocess"]["crop"]), (232, 224))
        self.assertEqual(cfg["preprocess"]["mean"], [0.485, 0.456, 0.406])
        self.assertEqual(cfg["batching"]["max_batch_size"], 16)

    def test_imagenet_v1_weights_use_resize_256(self):
        cfg = self.check_schema(export.config_toml(spec_for("--arch", "wide_resnet101_2", "--weights", "IMAGENET1K_V1")))
        self.assertEqual((cfg["preprocess"]["resize"], cfg["preprocess"]["crop"]), (256, 224))
        self.assertEqual(cfg["weights"], "IMAGENET1K_V1")
        self.assertTrue(cfg["pretrained"])

    def test_cifar(self):
        spec = spec_for("--arch", "wrn-16-4", "--seed", "3")
        cfg = self.check_schema(export.config_toml(spec))
        self.assertEqual(cfg["name"], "wrn_16_4")
        self.assertEqual(cfg["weights"], "random-init seed=3")
        self.assertEqual((cfg["preprocess"]["resize"], cfg["preprocess"]["crop"]), (32, 32))
        self.assertEqual(cfg["preprocess"]["std"], [0.2470, 0.2435, 0.2616])
        self.assertEqual(cfg["batching"]["max_batch_size"], 64)
        self.assertEqual(export.labels_txt(spec).splitlines()[3], "cat")

    def test_imagenet_labels(self):
        labels = export.labels_txt(spec_for("--arch", "wide_resnet50_2")).splitlines()
        self.assertEqual(len(labels), 1000)
        self.assertEqual(labels[0], "tench")
        self.assertEqual(labels[281], "tabby")

    def test_errors(self):
        for argv in (["--arch", "wrn-16-4", "--weights", "IMAGENET1K_V1"],
                     ["--arch", "wide_resnet50_2", "--weights", "NOPE"],
                     ["--arch", "wide_resnet50_2", "--dropout", "0.3"],
                     ["--arch", "vgg16"]):
            with self.assertRaises(export.ExportError, msg=argv):
                spec_for(*argv)


class ExportTests(unittest.TestCase):
    """One real export of a tiny WRN-10-1 through the CLI, checked with onnxruntime."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.out = Path(cls.tmp.name) / "tiny"
        cls.proc = subprocess.run(
            [sys.executable, str(ROOT / "models" / "export.py"), "--arch", "wrn-10-1", "--seed", "7",
             "--num-classes", "5", "--dropout", "0.3", "--out", str(cls.out), "--threads", "1"],
            capture_output=True, text=True, timeout=300)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_export_succeeded(self):
        self.assertEqual(self.proc.returncode, 0, self.proc.stdout + self.proc.stderr)
        self.assertIn("max abs diff", self.proc.stdout)
        self.assertEqual(sorted(p.name for p in self.out.iterdir()), ["config.toml", "labels.txt", "model.onnx"])

    def test_onnx_interface(self):
        import onnxruntime as ort

        sess = ort.InferenceSession(str(self.out / "model.onnx"), providers=["CPUExecutionProvider"])
        (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
        self.assertEqual((inp.name, inp.shape, inp.type), ("input", ["batch", 3, 32, 32], "tensor(float)"))
        self.assertEqual((out.name, out.shape), ("logits", ["batch", 5]))
        for n in (1, 4):
            x = np.random.default_rng(n).standard_normal((n, 3, 32, 32), dtype=np.float32)
            self.assertEqual(sess.run(None, {"input": x})[0].shape, (n, 5))
        # Eval graph: dropout is gone, so two runs agree exactly.
        x = np.ones((2, 3, 32, 32), np.float32)
        np.testing.assert_array_equal(sess.run(None, {"input": x})[0], sess.run(None, {"input": x})[0])

    def test_single_file_with_provenance(self):
        import onnx

        m = onnx.load(str(self.out / "model.onnx"), load_external_data=False)
        self.assertFalse(any(t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer))
        meta = {p.key: p.value for p in m.metadata_props}
        self.assertEqual(json.loads(meta[export.METADATA_KEY])["seed"], 7)
        self.assertEqual([o.version for o in m.opset_import if o.domain == ""], [18])

    def test_rerun_is_skipped(self):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = export.main(["--arch", "wrn-10-1", "--seed", "7", "--num-classes", "5", "--dropout", "0.3",
                              "--out", str(self.out)])
        self.assertEqual(rc, 0)
        self.assertIn("up to date", buf.getvalue())


class PreprocessTests(unittest.TestCase):
    def test_resized_size_and_reference_shape(self):
        from PIL import Image

        import preprocess_reference as pr

        self.assertEqual(pr.resized_size(451, 300, 232), (348, 232))
        self.assertEqual(pr.resized_size(300, 451, 232), (232, 348))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "grey.png"
            Image.fromarray(np.arange(300 * 451, dtype=np.uint32).reshape(300, 451).astype(np.uint8)).save(path)
            t = pr.preprocess(path, 232, 224, pr.IMAGENET_MEAN, pr.IMAGENET_STD)
            self.assertEqual((t.shape, t.dtype), ((3, 224, 224), np.float32))
            np.testing.assert_allclose((t[0] * 0.229 + 0.485), (t[1] * 0.224 + 0.456), atol=1e-6)  # grey -> R=G


if __name__ == "__main__":
    unittest.main()
