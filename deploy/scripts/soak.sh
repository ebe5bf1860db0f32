#!/usr/bin/env bash
# Overload soak: `wrn bench` far above capacity for a while, with a second client killed
# mid-stream, then checks: only RESOURCE_EXHAUSTED / DEADLINE_EXCEEDED errors, the queue never
# above its capacity, resident memory flat (end within 10 % of the figure once warm; start, warm, peak and end
# are printed), no request
# stuck in flight, and the server still answering. Exits 1 when a check fails.
#
#   deploy/scripts/soak.sh [SECONDS] [MODEL]       # defaults: 600 wide_resnet50_2
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
SECS="${1:-600}"; MODEL="${2:-wide_resnet50_2}"
PORT=50097; MPORT=9097; OUT=bench-results; mkdir -p "$OUT"
WRN=target/release/wrn
QCAP=32
"$WRN" serve --models "$MODEL" --default-model "$MODEL" --addr 127.0.0.1:$PORT --metrics-addr 127.0.0.1:$MPORT \
  --queue-capacity $QCAP --warmup one > "$OUT/soak-serve.log" 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do grep -q "SERVING" "$OUT/soak-serve.log" && break; sleep 0.5; done
metric() { curl -s http://127.0.0.1:$MPORT/metrics | awk -v n="$1" '$1 ~ "^"n"({|$)" {s+=$2} END {print s+0}'; }
START_RSS=$(metric wrn_process_resident_memory_bytes)
echo "start: rss $START_RSS bytes"
# A second client killed with SIGKILL in the middle of its requests.
( sleep 20; "$WRN" bench --addr 127.0.0.1:$PORT --concurrency 16 --duration-secs 60 --warmup-secs 0 \
    --images models/photos --timeout-secs 2 > "$OUT/soak-killed-client.log" 2>&1 & P=$!; sleep 15; kill -9 $P; echo "killed a client mid-stream" ) &
# Queue depth sampled every second.
# Resident memory: once warm (60 s into the load, or a tenth of a shorter run) and at its peak.
WARM_AT=$(( SECS < 600 ? SECS / 10 : 60 ))
( t0=$SECONDS; end=$((SECONDS + SECS)); max=0; warm=""; peak=0
  while (( SECONDS < end )); do
    d=$(metric wrn_queue_depth); d=${d%.*}; (( d > max )) && max=$d
    r=$(metric wrn_process_resident_memory_bytes); r=${r%.*}; (( r > peak )) && peak=$r
    [[ -z "$warm" ]] && (( SECONDS - t0 >= WARM_AT )) && warm=$r
    sleep 1
  done
  echo "$max" > "$OUT/soak-max-depth"; echo "${warm:-$peak} $peak" > "$OUT/soak-rss" ) &
SAMPLER=$!
"$WRN" bench --addr 127.0.0.1:$PORT --concurrency 256 --connections 8 --duration-secs "$SECS" --warmup-secs 0 \
  --images models/photos --timeout-secs 2 --metrics-url http://127.0.0.1:$MPORT/metrics --json "$OUT/soak.json"
wait $SAMPLER
sleep 3
END_RSS=$(metric wrn_process_resident_memory_bytes)
echo "end:   rss $END_RSS bytes"
read -r WARM_RSS PEAK_RSS < "$OUT/soak-rss"
echo "rss once warm (${WARM_AT} s into the load): $WARM_RSS bytes; peak $PEAK_RSS bytes"
echo "max queue depth seen: $(cat "$OUT/soak-max-depth") (capacity $QCAP)"
echo "in flight after the run: $(metric wrn_requests_in_flight)"
curl -s http://127.0.0.1:$MPORT/metrics | grep -E '^wrn_requests_total' | sed 's/^/  /'
"$WRN" classify --addr 127.0.0.1:$PORT models/photos/rocket.jpg | head -3
# The checks: a failed one makes the script exit 1.
fail=0
check() { if eval "$2"; then echo "PASS $1"; else echo "FAIL $1"; fail=1; fi; }
errors=$(.venv/bin/python - "$OUT/soak.json" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))[0]
print(" ".join(sorted(k for k in r["errors"] if k not in ("RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"))))
PYEOF
)
check "only RESOURCE_EXHAUSTED / DEADLINE_EXCEEDED errors${errors:+ (also: $errors)}" '[[ -z "$errors" ]]'
check "queue depth never above $QCAP" '(( $(cat "$OUT/soak-max-depth") <= QCAP ))'
check "nothing in flight after the run" '[[ "$(metric wrn_requests_in_flight)" == 0 ]]'
check "resident memory flat: end $END_RSS within 10 % of its warm $WARM_RSS" \
  '(( END_RSS * 10 <= WARM_RSS * 11 ))'
check "still answering" 'target/release/wrn classify --addr 127.0.0.1:$PORT models/photos/rocket.jpg >/dev/null'
exit "$fail"
