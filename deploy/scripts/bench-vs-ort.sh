#!/usr/bin/env bash
# One run, one machine: raw onnxruntime (Python, same model and threads) against the wrn
# server under `wrn bench`, then their ratios. Also the cost of metrics (bench with and
# without the Prometheus recorder at the same concurrency).
#
#   deploy/scripts/bench-vs-ort.sh [MODEL] [SECONDS]      # defaults: wide_resnet50_2 20
#
# Needs: deploy/scripts/setup-ort.sh cpu, deploy/scripts/setup-python.sh, the model exported
# (tests/python/generate_all.sh), and `cargo build --release`. Writes bench-results/*.json.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
MODEL="${1:-wide_resnet50_2}"
SECS="${2:-20}"
THREADS="${WRN_BENCH_THREADS:-2}"
OUT=bench-results
mkdir -p "$OUT"
PY=.venv/bin/python
WRN=target/release/wrn
[[ -x $WRN ]] || { echo "build first: cargo build --release" >&2; exit 1; }
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"

echo "== raw onnxruntime, $THREADS threads, batch sizes 1..32"
"$PY" models/bench_ort.py --model "models/repository/$MODEL" --threads "$THREADS" \
  --batches 1,2,4,8,16,32 --seconds "$SECS" --json "$OUT/ort_$MODEL.json"

PORT=50099; MPORT=9099
serve() {
  "$WRN" serve --models "$MODEL" --default-model "$MODEL" --addr 127.0.0.1:$PORT \
    --metrics-addr 127.0.0.1:$MPORT --intra-op-threads "$THREADS" --warmup corners "$@" \
    >"$OUT/serve.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 1 600); do
    if "$PY" - "$PORT" <<'PYEOF' 2>/dev/null; then break; fi
import socket, sys
socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=0.2).close()
PYEOF
    sleep 0.2
  done
  # Wait for SERVING (the model is warmed up before health turns SERVING).
  for _ in $(seq 1 600); do
    if .venv/bin/grpcurl -plaintext -d '{"service":""}' 127.0.0.1:$PORT grpc.health.v1.Health/Check 2>/dev/null | grep -q '"SERVING"'; then return; fi
    sleep 0.5
  done
  echo "server did not become SERVING" >&2; exit 1
}
stop() { kill -TERM "$SERVER"; wait "$SERVER" || true; }

echo "== wrn server under wrn bench (closed loop), concurrency 1,4,16,64"
serve
"$WRN" bench --addr 127.0.0.1:$PORT --model "$MODEL" --concurrency 1,4,16,64 \
  --duration-secs "$SECS" --warmup-secs 3 --images models/photos \
  --metrics-url http://127.0.0.1:$MPORT/metrics --json "$OUT/server_$MODEL.json"
curl -s http://127.0.0.1:$MPORT/metrics > "$OUT/metrics_$MODEL.txt" || true
echo "== metrics cost: concurrency 16 with metrics, then without"
"$WRN" bench --addr 127.0.0.1:$PORT --model "$MODEL" --concurrency 16 --duration-secs "$SECS" \
  --warmup-secs 3 --images models/photos --json "$OUT/server_metrics_on_$MODEL.json" >/dev/null
stop
serve --no-metrics
"$WRN" bench --addr 127.0.0.1:$PORT --model "$MODEL" --concurrency 16 --duration-secs "$SECS" \
  --warmup-secs 3 --images models/photos --json "$OUT/server_metrics_off_$MODEL.json" >/dev/null
stop

"$PY" - "$OUT" "$MODEL" <<'PYEOF'
import json, re, sys
out, model = sys.argv[1], sys.argv[2]
ort = json.load(open(f"{out}/ort_{model}.json"))
srv = json.load(open(f"{out}/server_{model}.json"))
on = json.load(open(f"{out}/server_metrics_on_{model}.json"))[0]
off = json.load(open(f"{out}/server_metrics_off_{model}.json"))[0]
text = open(f"{out}/metrics_{model}.txt").read()
def metric(name):
    m = re.search(rf'^{name}{{model="{model}"[^}}]*}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else float("nan")
pre_ms = 1e3 * metric("wrn_preprocess_seconds_sum") / metric("wrn_preprocess_seconds_count")
best = ort["summary"]["best_images_per_s"]; b1 = ort["summary"]["batch1_p50_ms"]
print(f"\nonnxruntime direct: best {best:.2f} img/s at batch {ort['summary']['best_batch']}; batch-1 p50 {b1:.1f} ms")
print(f"server preprocessing (mean over the run): {pre_ms:.2f} ms per image")
print(f"{'conc':>5} {'img/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'batch':>6} {'thr/ort_best':>13}")
for r in srv:
    mb = r.get("mean_batch_size")
    print(f"{r['concurrency']:>5} {r['throughput_img_s']:>8.2f} {r['latency_ms']['p50']:>8.1f} "
          f"{r['latency_ms']['p99']:>8.1f} {(f'{mb:.2f}' if mb else '-'):>6} {r['throughput_img_s']/best:>13.3f}")
c1 = next(r for r in srv if r["concurrency"] == 1)
c16 = next(r for r in srv if r["concurrency"] == 16)
bound = b1 + pre_ms + 2.0
print(f"\nc16 throughput / onnxruntime best-batch throughput = {c16['throughput_img_s']/best:.3f} (floor 0.9)")
print(f"c1 p50 {c1['latency_ms']['p50']:.1f} ms vs onnxruntime batch-1 p50 + preprocessing + 2 ms = {bound:.1f} ms "
      f"(ratio {c1['latency_ms']['p50']/bound:.3f})")
print(f"metrics cost at c16: {on['throughput_img_s']:.2f} img/s with, {off['throughput_img_s']:.2f} without "
      f"(ratio {on['throughput_img_s']/off['throughput_img_s']:.4f})")
PYEOF
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
