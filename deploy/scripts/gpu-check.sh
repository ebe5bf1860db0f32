#!/usr/bin/env bash
# The prepared GPU check (about 8 minutes on one NVIDIA GPU with driver >= 580 for CUDA 13):
#   1. fetches the pinned onnxruntime-gpu library and its CUDA/cuDNN runtime wheels
#      (deploy/scripts/setup-ort.sh gpu --with-cuda-runtime; --with-tensorrt for TensorRT);
#   2. starts `wrn serve` with --require-gpu on the CUDA provider, then on TensorRT (fp16),
#      classifies the test photos and compares each top-5 with the CPU answers for the same
#      graph (tests/data/generated/ort_reference/<model>.json);
#   3. benchmarks the server at concurrency 1, 16 and 64 against onnxruntime-gpu called
#      directly from Python (same provider, batch sizes 1..32), and prints the ratios.
#
#   deploy/scripts/gpu-check.sh [MODEL] [SECONDS]     # defaults: wide_resnet50_2 10
#
# Needs the repository set up as for the tests (models exported, release build). Results go
# to bench-results/gpu-*.json. Exits non-zero if a provider cannot be used or top-5 differ.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
MODEL="${1:-wide_resnet50_2}"
SECS="${2:-10}"
OUT=bench-results; mkdir -p "$OUT"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || echo "nvidia-smi not found"
LIB=$(deploy/scripts/setup-ort.sh gpu --with-cuda-runtime)
[[ -f .ort/gpu/env.sh ]] && source .ort/gpu/env.sh   # LD_LIBRARY_PATH for the CUDA/cuDNN wheels
WRN=target/release/wrn
[[ -x $WRN ]] || cargo build --release
PY=.venv/bin/python
PORT=50199; MPORT=9199

run_provider() {
  local provider=$1; shift
  echo "== $provider"
  "$WRN" serve --ort-lib "$LIB" --models "$MODEL" --default-model "$MODEL" \
    --addr 127.0.0.1:$PORT --metrics-addr 127.0.0.1:$MPORT \
    --execution-providers "$provider" --require-gpu --warmup all "$@" >"$OUT/gpu-$provider.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 1200); do
    .venv/bin/grpcurl -plaintext -d '{"service":""}' 127.0.0.1:$PORT grpc.health.v1.Health/Check 2>/dev/null | grep -q '"SERVING"' && break
    kill -0 $pid 2>/dev/null || { echo "server exited:"; tail -20 "$OUT/gpu-$provider.log"; return 1; }
    sleep 0.5
  done
  .venv/bin/grpcurl -plaintext -d "{\"model\":\"$MODEL\"}" 127.0.0.1:$PORT wrn.v1.Classifier/GetModel | grep -i execution
  "$WRN" classify --addr 127.0.0.1:$PORT --model "$MODEL" --json --top-k 5 models/photos/*.jpg models/photos/*.png > "$OUT/gpu-$provider-top5.json"
  "$PY" - "$OUT/gpu-$provider-top5.json" "tests/data/generated/ort_reference/$MODEL.json" "$provider" <<'PYEOF'
import json, sys
got = {r["file"].split("/")[-1]: [c["index"] for c in r["classes"]] for r in json.load(open(sys.argv[1]))}
ref = {e["photo"]: [c["index"] for c in e["top_k"]] for e in json.load(open(sys.argv[2]))["entries"]}
same1 = sum(got[p][0] == ref[p][0] for p in ref); overlap = sum(len(set(got[p]) & set(ref[p])) for p in ref)
print(f"{sys.argv[3]}: top-1 equal to CPU on {same1}/{len(ref)} photos; top-5 overlap {overlap}/{5*len(ref)}")
sys.exit(0 if same1 >= len(ref) - 1 else 1)
PYEOF
  "$WRN" bench --addr 127.0.0.1:$PORT --model "$MODEL" --concurrency 1,16,64 --duration-secs "$SECS" \
    --warmup-secs 2 --images models/photos --metrics-url http://127.0.0.1:$MPORT/metrics --json "$OUT/gpu-$provider-server.json"
  kill -TERM $pid; wait $pid || true
}

run_provider cuda
if deploy/scripts/setup-ort.sh gpu --with-tensorrt >/dev/null 2>&1; then
  [[ -f .ort/gpu/env.sh ]] && source .ort/gpu/env.sh
  WRN_MODELS_TRT=1 run_provider tensorrt || echo "TensorRT run failed (see $OUT/gpu-tensorrt.log)"
else
  echo "TensorRT runtime libraries unavailable: skipped the TensorRT provider"
fi

echo "== onnxruntime-gpu directly from Python (CUDA provider)"
"$PY" -m pip install -q "onnxruntime-gpu==1.31.1" --target "$ROOT/.cache/ort-gpu-py" >/dev/null
PYTHONPATH="$ROOT/.cache/ort-gpu-py" "$PY" - "$MODEL" "$SECS" "$OUT" <<'PYEOF'
import json, sys, time
import numpy as np, onnxruntime as ort
model, secs, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
s = ort.InferenceSession(f"models/repository/{model}/model.onnx", providers=["CUDAExecutionProvider"])
assert "CUDAExecutionProvider" in s.get_providers(), s.get_providers()
res = []
for b in (1, 2, 4, 8, 16, 32):
    x = np.random.default_rng(b).standard_normal((b, 3, 224, 224), dtype=np.float32)
    for _ in range(5): s.run(None, {"input": x})
    lat, end = [], time.perf_counter() + secs
    while time.perf_counter() < end:
        t = time.perf_counter(); s.run(None, {"input": x}); lat.append(time.perf_counter() - t)
    res.append({"batch": b, "img_s": b * len(lat) / sum(lat), "p50_ms": 1e3 * float(np.percentile(lat, 50))})
    print(res[-1])
json.dump(res, open(f"{out}/gpu-ort-direct.json", "w"), indent=1)
srv = json.load(open(f"{out}/gpu-cuda-server.json"))
best = max(r["img_s"] for r in res)
for r in srv:
    print(f"server c{r['concurrency']}: {r['throughput_img_s']:.1f} img/s, p50 {r['latency_ms']['p50']:.1f} ms; "
          f"ratio to onnxruntime best batch {r['throughput_img_s']/best:.3f}")
PYEOF
