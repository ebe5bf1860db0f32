#!/usr/bin/env bash
# Generate everything the Rust tests read, idempotently (fast when already current):
#   models/repository/{wide_resnet50_2,wide_resnet101_2,wrn_16_4}   (models/export.py --all-defaults)
#   models/photos/                                                    (models/photos.py)
#   tests/data/generated/preprocess/                                  (preprocess_reference.py)
#   tests/data/generated/ort_reference/<model>.json                   (ort_reference.py)
# Needs the venv: deploy/scripts/setup-python.sh. Usage: tests/python/generate_all.sh [--only-small]
# --only-small exports and references only wrn_16_4 (seconds instead of minutes).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[[ -x "$PY" ]] || { echo "generate_all: $PY not found; run deploy/scripts/setup-python.sh first" >&2; exit 1; }
cd "$ROOT"
start=$(date +%s)
models=(wide_resnet50_2 wide_resnet101_2 wrn_16_4)
if [[ "${1:-}" == "--only-small" ]]; then
  models=(wrn_16_4)
  "$PY" models/export.py --arch wrn-16-4 --random-init --seed 0
else
  "$PY" models/export.py --all-defaults
fi
"$PY" models/photos.py --out models/photos
"$PY" tests/python/preprocess_reference.py --photos models/photos --out tests/data/generated/preprocess
"$PY" tests/python/make_corpus.py --photo models/photos/rocket.jpg --out tests/data/generated/corpus
for m in "${models[@]}"; do
  "$PY" tests/python/ort_reference.py --model "models/repository/$m" --photos models/photos \
    --out "tests/data/generated/ort_reference/$m.json"
done
echo "generate_all: done in $(( $(date +%s) - start ))s"
