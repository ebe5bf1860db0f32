#!/usr/bin/env bash
# Create the project's Python environment (.venv at the repo root) from models/requirements.txt.
#
# Idempotent: a stamp file records the sha256 of the requirements; when it matches, nothing is
# reinstalled. Force a reinstall with --force. The interpreter can be chosen with PYTHON=...
#
# Usage: deploy/scripts/setup-python.sh [--force]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${WRN_VENV:-$ROOT/.venv}"
REQS="$ROOT/models/requirements.txt"
STAMP="$VENV/.wrn-requirements.sha256"
PYTHON="${PYTHON:-python3}"
FORCE=0

for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "setup-python: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

start=$(date +%s)

if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "setup-python: '$PYTHON' not found; install Python 3.11 or set PYTHON=/path/to/python3" >&2
  exit 1
fi
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'; then
  echo "setup-python: $("$PYTHON" --version 2>&1) is too old; Python >= 3.10 is required" >&2
  exit 1
fi
[[ -f "$REQS" ]] || { echo "setup-python: missing $REQS" >&2; exit 1; }

want="$(sha256sum "$REQS" | cut -d' ' -f1)"
if [[ $FORCE -eq 0 && -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  echo "setup-python: $VENV is up to date with models/requirements.txt (nothing to do)"
  echo "$VENV"
  exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "setup-python: creating $VENV with $("$PYTHON" --version 2>&1)"
  "$PYTHON" -m venv "$VENV"
fi

rm -f "$STAMP"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
echo "setup-python: installing models/requirements.txt (torch with CUDA wheels is several GB; takes a few minutes)"
"$VENV/bin/python" -m pip install --disable-pip-version-check --progress-bar off -r "$REQS"

# Smoke check: the imports the tooling needs and the grpcurl binary.
"$VENV/bin/python" - <<'PY'
import onnx, onnxruntime, onnxscript, torch, torchvision, numpy, PIL, skimage  # noqa: F401
print(f"setup-python: torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"onnxruntime {onnxruntime.__version__}, onnx {onnx.__version__}")
PY
if [[ -x "$VENV/bin/grpcurl" ]]; then
  echo "setup-python: $("$VENV/bin/grpcurl" -version 2>&1 | head -1) at $VENV/bin/grpcurl"
else
  echo "setup-python: warning: grpcurl was not installed into $VENV/bin" >&2
fi

echo "$want" > "$STAMP"
echo "setup-python: done in $(( $(date +%s) - start ))s"
echo "$VENV"
