#!/usr/bin/env python3
"""Run the rendered pod spec's server command for real, on this machine, without a cluster.

Takes the `wrn` container of a rendered Deployment (args, env, probes, preStop, grace period,
the ConfigMap's config.toml and the ServiceMonitor's scrape path) and starts the local `wrn`
binary exactly so, with three substitutions: the models directory becomes a temporary folder
holding the model files from models/repository/<name>/ (symlinks) and the ConfigMap's
config.toml, the listen addresses become free loopback ports, and ORT_DYLIB_PATH points at
.ort/cpu (the image's /opt/onnxruntime/lib). Then it acts like the kubelet:

  cpu:  the startup and readiness probe services turn SERVING within the startup budget; the
        liveness service answers SERVING; the metrics path scrapes; with a Classify call of 16
        photos in flight, SIGTERM (after what would be the preStop sleep) makes readiness fail
        (NOT_SERVING, or the connection refused once the listener closed), the call still completes, and the process exits 0 within the drain timeout,
        inside the grace period.
  gpu:  on a machine without an NVIDIA GPU, the rendered env (WRN_REQUIRE_GPU=true) must make
        start-up fail with a message naming the missing GPU provider, i.e. the pod would never
        turn ready instead of silently serving from the CPU. Skipped where a GPU is present.

Usage: smoke_pod.py RENDERED_DIR [--bin PATH]      (prints `smoke: N passed, M failed`)
Skips (exit 0, says why) when the binary, the model files or .ort/cpu are missing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

K8S_DIR = Path(__file__).resolve().parent
REPO = K8S_DIR.parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_bin(explicit: str | None) -> Path | None:
    if explicit:
        return Path(explicit)
    if os.environ.get("WRN_BIN"):
        return Path(os.environ["WRN_BIN"])
    found = [p for p in (REPO / "target/release/wrn", REPO / "target/debug/wrn") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


class Pod:
    """What the smoke test needs from one rendered target."""

    def __init__(self, path: Path) -> None:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        dep = next(d for d in docs if d["kind"] == "Deployment")
        self.pod = dep["spec"]["template"]["spec"]
        self.c = next(c for c in self.pod["containers"] if c["name"] == "wrn")
        self.env = {e["name"]: e["value"] for e in self.c.get("env", []) if "value" in e}
        mounts = self.c.get("volumeMounts", [])
        cfg_mount = next(m for m in mounts if m.get("subPath") == "config.toml")
        vols = {v["name"]: v for v in self.pod["volumes"]}
        cm_name = vols[cfg_mount["name"]]["configMap"]["name"]
        cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == cm_name)
        self.config_toml = cm["data"]["config.toml"]
        self.config_path = cfg_mount["mountPath"]  # /models/<name>/config.toml
        sm = [d for d in docs if d["kind"] == "ServiceMonitor"]
        self.metrics_path = sm[0]["spec"]["endpoints"][0].get("path", "/metrics") if sm else "/metrics"
        self.grace = self.pod.get("terminationGracePeriodSeconds", 30)
        self.pre_stop = int(((self.c.get("lifecycle") or {}).get("preStop") or {}).get("sleep", {}).get("seconds", 0))

    def probe(self, kind: str) -> dict:
        return self.c.get(kind) or {}


def run_target(name: str, pod: Pod, wrn: Path, report) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    gpu = "nvidia.com/gpu" in ((pod.c.get("resources") or {}).get("limits") or {})
    model_dir_in_pod = str(Path(pod.config_path).parent)          # /models/<name>
    models_dir_in_pod = str(Path(model_dir_in_pod).parent)        # /models
    model = Path(model_dir_in_pod).name
    src = REPO / "models" / "repository" / model
    tmp = Path(tempfile.mkdtemp(prefix=f"wrn-smoke-{name}-"))
    try:
        (tmp / model).mkdir()
        for f in src.iterdir():
            if f.name != "config.toml":
                (tmp / model / f.name).symlink_to(f.resolve())
        (tmp / model / "config.toml").write_text(pod.config_toml)

        grpc_port, metrics_port = free_port(), free_port()
        args = []
        for a in pod.c.get("args", []):
            flag = a.split("=", 1)[0]
            if flag in ("--addr", "--metrics-addr"):
                continue
            args.append(a.replace(models_dir_in_pod, str(tmp), 1) if flag == "--models-dir" else a)
        args += [f"--addr=127.0.0.1:{grpc_port}", f"--metrics-addr=127.0.0.1:{metrics_port}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("WRN_")}
        env.update(pod.env)
        env["ORT_DYLIB_PATH"] = str(REPO / ".ort/cpu/libonnxruntime.so")
        log = tmp / "server.log"
        print(f"  {name}: {wrn.name} {' '.join(args)}  env: "
              + " ".join(f"{k}={v}" for k, v in sorted(pod.env.items())))
        started = time.monotonic()
        proc = subprocess.Popen([str(wrn)] + args, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
        try:
            if gpu:
                try:
                    rc = proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    rc = None
                text = log.read_text()
                report(f"{name}: without a GPU, start-up fails (WRN_REQUIRE_GPU) instead of serving from the CPU",
                       rc not in (None, 0) and "require-gpu" in text, f"exit {rc}: {text[-300:]}")
                return

            channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
            health = health_pb2_grpc.HealthStub(channel)

            def status(service: str) -> str:
                try:
                    r = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
                    return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)
                except grpc.RpcError as e:
                    return e.code().name

            startup, ready, live = (pod.probe(k) for k in ("startupProbe", "readinessProbe", "livenessProbe"))
            budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
            svc_start = startup.get("grpc", {}).get("service", "")
            svc_ready = ready.get("grpc", {}).get("service", "")
            svc_live = live.get("grpc", {}).get("service", "")
            while time.monotonic() - started < budget and proc.poll() is None:
                if status(svc_start) == "SERVING":
                    break
                time.sleep(0.5)
            took = time.monotonic() - started
            report(f"{name}: startup probe service {svc_start!r} SERVING within the startup budget",
                   status(svc_start) == "SERVING", f"after {took:.0f} s of {budget} s; log: {log.read_text()[-400:]}")
            print(f"  {name}: SERVING after {took:.1f} s (startup budget {budget} s)")
            report(f"{name}: readiness probe service {svc_ready!r} SERVING", status(svc_ready) == "SERVING")
            report(f"{name}: liveness probe service {svc_live!r} SERVING", status(svc_live) == "SERVING")
            try:
                body = urllib.request.urlopen(
                    f"http://127.0.0.1:{metrics_port}{pod.metrics_path}", timeout=5).read().decode()
                report(f"{name}: metrics scrape at {pod.metrics_path}", "wrn_" in body)
            except OSError as e:
                report(f"{name}: metrics scrape at {pod.metrics_path}", False, str(e))

            # A request in flight when the kubelet's SIGTERM arrives (after the preStop sleep,
            # which needs nothing here): one Classify call with a full batch of photos.
            photos = sorted(p for p in (REPO / "models/photos").glob("*") if p.suffix in (".jpg", ".png"))
            client = None
            if photos:
                batch = [str(p) for p in (photos * 16)[:16]]
                client = subprocess.Popen([str(wrn), "classify", "--addr", f"127.0.0.1:{grpc_port}",
                                           "--top-k", "1", "--json"] + batch,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
                # Wait until the server counts the call in flight; a server without that gauge
                # gets 3 s, far more than sending 16 photos over loopback takes.
                t = time.monotonic()
                while time.monotonic() - t < 20 and client.poll() is None:
                    try:
                        body = urllib.request.urlopen(
                            f"http://127.0.0.1:{metrics_port}{pod.metrics_path}", timeout=2).read().decode()
                    except OSError:
                        body = ""
                    gauge = [line for line in body.splitlines() if line.startswith("wrn_requests_in_flight")]
                    if any(not line.rstrip().endswith(" 0") for line in gauge):
                        break
                    if not gauge and time.monotonic() - t >= 3:
                        break
                    time.sleep(0.05)
            drain = int(pod.env.get("WRN_DRAIN_TIMEOUT_SECS", "30"))
            in_flight = client is not None and client.poll() is None
            if not in_flight:
                print(f"  {name}: note: no Classify call in flight at SIGTERM (no photos, or it finished "
                      "first); only the exit is checked")
            t = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            while_running = []
            while proc.poll() is None and time.monotonic() - t < drain + 5:
                st = status(svc_ready)
                if proc.poll() is None:
                    while_running.append(st)
                time.sleep(0.02)
            took = time.monotonic() - t
            rc = proc.poll()
            if in_flight:
                # The kubelet opens a new connection per probe: after SIGTERM the server answers
                # NOT_SERVING, or refuses the connection once its listener is closed (GOAWAY on
                # ours); either way the probe fails. It must not keep answering SERVING.
                report(f"{name}: on SIGTERM readiness stops answering SERVING while the drain runs",
                       bool(while_running) and while_running[-1] != "SERVING",
                       f"observed {while_running[:3]}...{while_running[-3:]}")
                out = client.communicate(timeout=drain + 10)[0].decode()
                report(f"{name}: the request in flight at SIGTERM completes", client.returncode == 0,
                       out[-300:])
            elif client is not None:
                client.communicate()
            report(f"{name}: exits 0 within the drain timeout ({drain} s)", rc == 0 and took <= drain + 1,
                   f"exit {rc} after {took:.1f} s")
            print(f"  {name}: drained in {took:.1f} s")
            report(f"{name}: preStop {pod.pre_stop} s + drain {took:.1f} s < grace {pod.grace} s",
                   pod.pre_stop + took < pod.grace)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rendered", type=Path)
    ap.add_argument("--bin")
    a = ap.parse_args()

    wrn = find_bin(a.bin)
    ort = REPO / ".ort/cpu/libonnxruntime.so"
    if wrn is None or not wrn.is_file():
        print("smoke: SKIP, no wrn binary (cargo build, or set WRN_BIN)")
        return 0
    if not ort.exists():
        print("smoke: SKIP, no .ort/cpu/libonnxruntime.so (deploy/scripts/setup-ort.sh cpu)")
        return 0
    built = time.strftime("%Y-%m-%d %H:%M", time.localtime(wrn.stat().st_mtime))
    print(f"smoke: {wrn} (built {built}), ONNX Runtime {ort.resolve().name}")
    passed = failed = 0

    def report(name: str, ok: bool, detail: str = "") -> None:
        nonlocal passed, failed
        if ok:
            passed += 1
            print(f"ok   {name}")
        else:
            failed += 1
            print(f"FAIL {name}" + (f": {detail}" if detail else ""))

    has_gpu = shutil.which("nvidia-smi") is not None
    for name in ("cpu", "gpu"):
        pod = Pod(a.rendered / f"{name}.yaml")
        model = Path(pod.config_path).parent.name
        if not (REPO / "models/repository" / model / "model.onnx").is_file():
            print(f"smoke: SKIP {name}, no models/repository/{model}/model.onnx (models/export.py)")
            continue
        if name == "gpu" and has_gpu:
            print("smoke: SKIP gpu, this machine has a GPU (the deploy check only covers the no-GPU refusal)")
            continue
        run_target(name, pod, wrn, report)
    print(f"smoke: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
