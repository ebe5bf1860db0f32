#!/usr/bin/env bash
# The README's "run" command: from a fresh clone to `wrn serve` on the default model.
#
#   deploy/scripts/run.sh [wrn serve flags...]      e.g. deploy/scripts/run.sh --addr 127.0.0.1:50051
#   deploy/scripts/run.sh --prepare-only            steps 1-3 only (used by deploy/scripts/test.sh)
#
# Steps (each is skipped quickly when already done, and each prints its time):
#   1. system packages: a C linker (apt `build-essential`) and Python's venv/pip modules (apt
#      `python3-venv python3-pip`), installed with apt-get only when missing; Rust >= 1.92 must be
#      installed already (https://rustup.rs): no Debian release ships a new enough cargo;
#   2. Python tooling: deploy/scripts/setup-python.sh (.venv from models/requirements.txt);
#   3. ONNX Runtime: deploy/scripts/setup-ort.sh cpu (pinned wheel, sha256-checked, .ort/cpu/);
#   4. the default model models/repository/wide_resnet50_2: torchvision's pretrained IMAGENET1K_V2
#      weights when they can be downloaded, otherwise the same architecture with seeded random
#      weights (--random-init --seed 0), said loudly; WRN_WEIGHTS=random skips the download try;
#      plus the sample photos in models/photos/ (models/photos.py, bundled with scikit-image);
#   5. cargo build --release;
#   6. exec target/release/wrn serve "$@" with WRN_MODELS and WRN_DEFAULT_MODEL defaulting to
#      wide_resnet50_2 (gRPC on 0.0.0.0:50051, metrics on 0.0.0.0:9090/metrics); flags win over
#      those, e.g. `run.sh --models wide_resnet50_2,wrn_16_4`.
# Environment: PYTHON (interpreter for the venv), WRN_WEIGHTS=pretrained|random|auto (default auto),
# WRN_NO_APT=1 (never call apt-get; fail with the package list instead).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
MODEL=wide_resnet50_2
PREPARE_ONLY=0
if [[ "${1:-}" == "--prepare-only" ]]; then PREPARE_ONLY=1; shift; fi
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0
fi

T0=$(date +%s)
log() { echo "run.sh: $*" >&2; }
die() { echo "run.sh: error: $*" >&2; exit 1; }
step_start=0
step() { step_start=$(date +%s); log "== $* =="; }
step_done() { log "   done in $(( $(date +%s) - step_start ))s"; }

# --- 1. system packages -------------------------------------------------------------------------
step "1/6 system packages"
export PATH="$HOME/.cargo/bin:$PATH"
missing=()
command -v cc >/dev/null 2>&1 || missing+=(build-essential)   # linker, and C for the ring crate
PY="${PYTHON:-python3}"
if ! command -v "$PY" >/dev/null 2>&1; then
  missing+=(python3 python3-venv python3-pip)
else
  "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
  "$PY" -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
fi
if [[ ${#missing[@]} -gt 0 ]]; then
  if [[ "${WRN_NO_APT:-0}" == 1 ]] || ! command -v apt-get >/dev/null 2>&1; then
    die "missing ${missing[*]} (a C linker for cargo, Python >= 3.11 with venv and pip); install them and rerun"
  fi
  SUDO=(); [[ $(id -u) -eq 0 ]] || SUDO=(sudo)
  log "installing ${missing[*]} with apt-get"
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" ca-certificates >/dev/null
fi
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "$("$PY" --version 2>&1) is too old: Python >= 3.11 is needed (set PYTHON=/path/to/python3.11)"
command -v cargo >/dev/null 2>&1 \
  || die "cargo not found: install Rust >= 1.92 with rustup (https://rustup.rs), then rerun"
rustv="$(rustc --version | awk '{print $2}')"
[[ "$(printf '%s\n' 1.92.0 "$rustv" | sort -V | head -1)" == 1.92.0 ]] \
  || die "rustc $rustv is too old: the crate needs Rust >= 1.92 (rustup update stable)"
log "   cc: $(command -v cc), $("$PY" --version 2>&1), rustc $rustv"
step_done

# --- 2. Python tooling --------------------------------------------------------------------------
step "2/6 Python venv (deploy/scripts/setup-python.sh)"
PYTHON="$PY" deploy/scripts/setup-python.sh >&2
step_done

# --- 3. ONNX Runtime ----------------------------------------------------------------------------
step "3/6 ONNX Runtime (deploy/scripts/setup-ort.sh cpu)"
ORT_LIB="$(PYTHON="$PY" deploy/scripts/setup-ort.sh cpu)"
log "   $ORT_LIB"
step_done

if [[ $PREPARE_ONLY -eq 1 ]]; then
  log "prepared in $(( $(date +%s) - T0 ))s (--prepare-only)"
  exit 0
fi

# --- 4. default model ---------------------------------------------------------------------------
step "4/6 default model $MODEL"
VPY="$ROOT/.venv/bin/python"
CFG="models/repository/$MODEL/config.toml"
banner() {
  log "****************************************************************************************"
  local line; for line in "$@"; do log "*** $line"; done
  log "****************************************************************************************"
}
if [[ -f "$CFG" && -f "models/repository/$MODEL/model.onnx" ]] && grep -q '^pretrained = true' "$CFG"; then
  log "   $MODEL already has pretrained weights ($(grep '^weights' "$CFG"))"
else
  weights="${WRN_WEIGHTS:-auto}"
  got=""
  if [[ "$weights" != random ]]; then
    log "   trying torchvision's pretrained IMAGENET1K_V2 weights (download.pytorch.org)"
    if "$VPY" models/export.py --arch "$MODEL" --weights IMAGENET1K_V2 >&2; then
      got=pretrained
      banner "$MODEL: PRETRAINED weights IMAGENET1K_V2 (torchvision), real ImageNet classes"
    elif [[ "$weights" == pretrained ]]; then
      die "WRN_WEIGHTS=pretrained but the pretrained weights could not be downloaded (see above)"
    fi
  fi
  if [[ -z "$got" ]]; then
    "$VPY" models/export.py --arch "$MODEL" --random-init --seed 0 >&2
    if [[ "$weights" == random ]]; then
      why="WRN_WEIGHTS=random"
    else
      why="the pretrained download FAILED (no access to download.pytorch.org?)"
    fi
    banner "$MODEL: SEEDED RANDOM weights (random-init seed=0) because $why." \
      "The server runs and answers, but its classes are NOT meaningful predictions." \
      "For real ones: make download.pytorch.org reachable and rerun, or put" \
      "wide_resnet50_2-9ba9bcbe.pth into ~/.cache/torch/hub/checkpoints/ and rerun."
  fi
fi
"$VPY" models/photos.py --out models/photos >&2   # sample photos for `wrn classify`
step_done

# --- 5. build -----------------------------------------------------------------------------------
step "5/6 cargo build --release"
cargo build --release --locked
step_done

# Defaults through the environment, so flags in "$@" (--models, --default-model, ...) win.
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$ORT_LIB}"
export WRN_MODELS="${WRN_MODELS:-$MODEL}" WRN_DEFAULT_MODEL="${WRN_DEFAULT_MODEL:-$MODEL}"
log "ready in $(( $(date +%s) - T0 ))s: WRN_MODELS=$WRN_MODELS exec target/release/wrn serve $*"
log "   then, in another shell: target/release/wrn classify models/photos/chelsea.jpg"
step "6/6 wrn serve"
exec target/release/wrn serve "$@"
