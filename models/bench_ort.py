#!/usr/bin/env python3
"""Raw onnxruntime throughput and latency for a model directory: the ceiling the server is held to.

    python models/bench_ort.py --model models/repository/wide_resnet50_2 --threads 2 \
        --batches 1,2,4,8,16,32 --seconds 10 --json bench-results/ort_wrn50.json
    python models/bench_ort.py --model ... --parallel-sessions 2 --threads 1   # two 1-thread sessions

Session options match the server: intra-op threads N, inter-op 1, graph optimisation "all",
sequential execution, CPU execution provider. Each batch size runs for --seconds (at least
--min-calls calls) after a warm-up; with --parallel-sessions M, M sessions run side by side in M
threads (onnxruntime releases the GIL) and throughput is their sum. Reports images/s and
per-call latency percentiles per batch size, the best-throughput batch size and batch-1 p50.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort


def make_session(model: Path, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])


def percentiles(lat_s: list[float]) -> dict:
    a = np.asarray(lat_s) * 1e3
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean()), "min": float(a.min()),
            "max": float(a.max())}


def run_loop(sess, x, seconds: float, min_calls: int, start: threading.Barrier | None, out: list) -> None:
    feed = {"input": x}
    if start is not None:
        start.wait()
    lat, t_end = [], time.perf_counter() + seconds
    while True:
        t = time.perf_counter()
        sess.run(["logits"], feed)
        lat.append(time.perf_counter() - t)
        if t + lat[-1] >= t_end and len(lat) >= min_calls:
            break
    out.append(lat)


def bench_batch(sessions, batch: int, size: int, seconds: float, min_calls: int, warmup: int) -> dict:
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, 3, size, size), dtype=np.float32)
    for s in sessions:
        for _ in range(warmup):
            s.run(["logits"], {"input": x})
    results: list[list[float]] = []
    if len(sessions) == 1:
        t0 = time.perf_counter()
        run_loop(sessions[0], x, seconds, min_calls, None, results)
        wall = time.perf_counter() - t0
    else:
        barrier = threading.Barrier(len(sessions) + 1)
        threads = [threading.Thread(target=run_loop, args=(s, x, seconds, min_calls, barrier, results))
                   for s in sessions]
        for t in threads:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    lat = [v for r in results for v in r]
    calls = len(lat)
    return {"batch": batch, "calls": calls, "seconds": wall, "images_per_s": calls * batch / wall,
            "latency_ms": percentiles(lat)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=Path("models/repository/wide_resnet50_2"))
    p.add_argument("--threads", type=int, default=2, help="intra-op threads per session")
    p.add_argument("--parallel-sessions", type=int, default=1, help="sessions run side by side in threads")
    p.add_argument("--batches", default="1,2,4,8,16,32")
    p.add_argument("--seconds", type=float, default=10.0, help="measured time per batch size")
    p.add_argument("--min-calls", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2, help="warm-up calls per session and batch size")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    if not batches or min(batches) < 1 or args.threads < 1 or args.parallel_sessions < 1:
        p.error("--batches, --threads and --parallel-sessions must be positive")

    cfg = tomllib.loads((args.model / "config.toml").read_text())
    model_path = args.model / cfg["model_file"]
    size = int(cfg["preprocess"]["crop"])
    load_start = list(os.getloadavg())  # other work on the machine skews the numbers; recorded
    t0 = time.perf_counter()
    sessions = [make_session(model_path, args.threads) for _ in range(args.parallel_sessions)]
    load_s = time.perf_counter() - t0
    print(f"bench_ort: {cfg['name']} ({model_path.stat().st_size / 1e6:.0f} MB), onnxruntime {ort.__version__}, "
          f"{args.parallel_sessions} session(s) x {args.threads} intra-op thread(s), {os.cpu_count()} CPUs, "
          f"session load {load_s:.2f}s, load average {load_start[0]:.2f}")
    print(f"{'batch':>5} {'calls':>6} {'img/s':>9} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'ms/img':>8}")
    results = []
    for b in batches:
        r = bench_batch(sessions, b, size, args.seconds, args.min_calls, args.warmup)
        results.append(r)
        lat = r["latency_ms"]
        print(f"{b:>5} {r['calls']:>6} {r['images_per_s']:>9.2f} {lat['p50']:>9.1f} {lat['p90']:>9.1f} "
              f"{lat['p99']:>9.1f} {lat['p50'] / b:>8.1f}", flush=True)
    best = max(results, key=lambda r: r["images_per_s"])
    b1 = next((r for r in results if r["batch"] == 1), None)
    summary = {"best_batch": best["batch"], "best_images_per_s": best["images_per_s"],
               "batch1_p50_ms": b1["latency_ms"]["p50"] if b1 else None}
    print(f"best: batch {best['batch']} at {best['images_per_s']:.2f} img/s"
          + (f"; batch-1 p50 {summary['batch1_p50_ms']:.1f} ms" if b1 else ""))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "model": cfg["name"], "model_file": str(model_path), "onnxruntime": ort.__version__,
            "machine": {"cpus": os.cpu_count(), "processor": platform.processor(), "python": platform.python_version(),
                        "loadavg_start": load_start, "loadavg_end": list(os.getloadavg())},
            "session_options": {"intra_op_threads": args.threads, "inter_op_threads": 1,
                                "graph_optimization_level": "all", "execution_mode": "sequential",
                                "providers": ["CPUExecutionProvider"]},
            "parallel_sessions": args.parallel_sessions, "seconds_per_batch": args.seconds,
            "input_shape": [None, 3, size, size], "session_load_s": load_s,
            "results": results, "summary": summary,
        }, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
