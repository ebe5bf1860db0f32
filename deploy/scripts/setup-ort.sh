#!/usr/bin/env bash
# Fetch the ONNX Runtime shared library that `wrn` loads at run time (ort crate, load-dynamic).
#
# Usage: deploy/scripts/setup-ort.sh [cpu|gpu] [--with-cuda-runtime] [--with-tensorrt] [--force]
#
#   cpu (default)  onnxruntime==1.31.1 wheel     -> .ort/cpu/libonnxruntime.so
#   gpu            onnxruntime-gpu==1.31.1 wheel -> .ort/gpu/libonnxruntime.so (+ CUDA/TensorRT EPs)
#
# The official wheel is downloaded from PyPI with pip (no build-time download anywhere else),
# checked against the sha256 pinned below, and only the shared libraries are unpacked:
#   onnxruntime/capi/libonnxruntime.so.1.31.1            (both)
#   onnxruntime/capi/libonnxruntime_providers_shared.so  (both)
#   onnxruntime/capi/libonnxruntime_providers_cuda.so    (gpu)
#   onnxruntime/capi/libonnxruntime_providers_tensorrt.so(gpu)
# and libonnxruntime.so is made a symlink to libonnxruntime.so.1.31.1. Idempotent: when the
# library is already there it only prints the path. Progress goes to stderr and stdout carries only
# the library path, so `export ORT_DYLIB_PATH=$(deploy/scripts/setup-ort.sh cpu)` works.
#
# GPU runtime libraries. onnxruntime-gpu 1.31.1 is built for CUDA 13 and cuDNN 9; its wheel
# metadata names these PyPI runtime wheels (extras "cuda" and "cudnn"):
#   nvidia-cuda-nvrtc~=13.0  nvidia-cuda-runtime~=13.0  nvidia-cufft~=12.0
#   nvidia-curand~=10.0      nvidia-cudnn-cu13~=9.0
# libonnxruntime_providers_cuda.so also links libcublas.so.13/libcublasLt.so.13 (nvidia-cublas, not
# named in the metadata but needed). The NVIDIA driver (libcuda.so.1) must come from the host.
# --with-cuda-runtime pip-installs those wheels (pinned below; about 2 GB) into .ort/gpu/site and
# writes .ort/gpu/env.sh, which puts their lib directories on LD_LIBRARY_PATH (the CUDA 13 wheels
# use site/nvidia/cu13/lib and site/nvidia/cudnn/lib). The torch venv does NOT cover this:
# it has no libcurand.
#
# TensorRT: libonnxruntime_providers_tensorrt.so links libnvinfer.so.10 and libnvonnxparser.so.10,
# i.e. TensorRT 10.x for CUDA 13 = tensorrt-cu13-libs==10.16.1.11 (the newest 10.x; TensorRT 11.x is
# a new major version and does not provide the .so.10 libraries this ORT build links). On PyPI
# that package is an NVIDIA "wheel_stub" sdist that fetches the real wheel from
# https://pypi.nvidia.com at install time, so --with-tensorrt needs that host to be reachable
# (it is not in the wrn build sandbox). It also installs into .ort/gpu/site.
#
# In containers the result is copied to /opt/onnxruntime/lib and ORT_DYLIB_PATH points there.
set -euo pipefail

ORT_VERSION="1.31.1"
# sha256 of the official cp311 manylinux_2_28 x86_64 wheels on PyPI (checked 2026-12-03).
CPU_WHEEL="onnxruntime-${ORT_VERSION}-cp311-cp311-manylinux_2_28_x86_64.whl"
CPU_SHA256="5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f"   # 23.8 MB
GPU_WHEEL="onnxruntime_gpu-${ORT_VERSION}-cp311-cp311-manylinux_2_28_x86_64.whl"
GPU_SHA256="e26c475fe361b2015f45b4b824bd13f0bb20204e59b62814e6f0acd5f3d491a6"   # 255.6 MB

# Exact versions inside the ranges the onnxruntime-gpu metadata allows (resolved 2026-12-03), so a
# rebuild gets the same libraries; override with WRN_CUDA_WHEELS="pkg==ver ..." if a driver needs it.
CUDA_RUNTIME_WHEELS=(
  "nvidia-cuda-nvrtc==13.5.37" "nvidia-cuda-runtime==13.5.37" "nvidia-cufft==12.5.0.14"
  "nvidia-curand==10.4.5.25" "nvidia-cudnn-cu13==9.28.1.4" "nvidia-cublas==13.10.0.20"
  "nvidia-nvjitlink==13.5.37"
)
if [[ -n "${WRN_CUDA_WHEELS:-}" ]]; then read -r -a CUDA_RUNTIME_WHEELS <<< "$WRN_CUDA_WHEELS"; fi
TENSORRT_WHEELS=("tensorrt-cu13-libs==10.16.1.11")

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="$ROOT/.cache/wheels"
PYTHON="${PYTHON:-python3}"

# Progress goes to stderr; stdout carries only the final library path.
log() { echo "setup-ort: $*" >&2; }
die() { echo "setup-ort: error: $*" >&2; exit 1; }

FLAVOR=cpu
WITH_CUDA=0
WITH_TRT=0
FORCE=0
for arg in "$@"; do
  case "$arg" in
    cpu|gpu) FLAVOR="$arg" ;;
    --with-cuda-runtime) WITH_CUDA=1 ;;
    --with-tensorrt) WITH_TRT=1 ;;
    --force) FORCE=1 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) log "unknown argument '$arg' (usage: setup-ort.sh [cpu|gpu] [--with-cuda-runtime] [--with-tensorrt] [--force])"; exit 2 ;;
  esac
done
if [[ "$FLAVOR" == cpu && ( $WITH_CUDA -eq 1 || $WITH_TRT -eq 1 ) ]]; then
  log "--with-cuda-runtime/--with-tensorrt only make sense with 'gpu'"
  exit 2
fi

if [[ "$FLAVOR" == gpu ]]; then
  PKG="onnxruntime-gpu"; WHEEL="$GPU_WHEEL"; SHA="$GPU_SHA256"
  LIBS=(libonnxruntime.so.${ORT_VERSION} libonnxruntime_providers_shared.so
        libonnxruntime_providers_cuda.so libonnxruntime_providers_tensorrt.so)
else
  PKG="onnxruntime"; WHEEL="$CPU_WHEEL"; SHA="$CPU_SHA256"
  LIBS=(libonnxruntime.so.${ORT_VERSION} libonnxruntime_providers_shared.so)
fi
DEST="$ROOT/.ort/$FLAVOR"
LIB="$DEST/libonnxruntime.so"


have_all_libs() {
  [[ -L "$LIB" && -f "$DEST/.wheel-sha256" && "$(cat "$DEST/.wheel-sha256")" == "$SHA" ]] || return 1
  local l; for l in "${LIBS[@]}"; do [[ -f "$DEST/$l" ]] || return 1; done
}

pip_cmd() {
  if "$PYTHON" -m pip --version >/dev/null 2>&1; then "$PYTHON" -m pip "$@"
  elif [[ -x "$ROOT/.venv/bin/python" ]]; then "$ROOT/.venv/bin/python" -m pip "$@"
  else die "pip not found: install python3-pip, or set PYTHON=/path/to/python3 that has pip"; fi
}

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

if [[ $FORCE -eq 0 ]] && have_all_libs; then
  log "$PKG $ORT_VERSION already unpacked in $DEST"
else
  command -v unzip >/dev/null || command -v "$PYTHON" >/dev/null || die "need unzip or python3 to unpack the wheel"
  mkdir -p "$CACHE"
  wheel_path="$CACHE/$WHEEL"
  if [[ -f "$wheel_path" && "$(sha_of "$wheel_path")" != "$SHA" ]]; then
    log "cached $WHEEL has the wrong sha256; downloading it again"
    rm -f "$wheel_path"
  fi
  if [[ ! -f "$wheel_path" ]]; then
    log "downloading $PKG==$ORT_VERSION from PyPI into $CACHE"
    # The wheel is chosen by explicit tags so this works from any local Python version.
    if ! pip_cmd download --disable-pip-version-check --no-deps --only-binary=:all: \
        --python-version 3.11 --implementation cp --abi cp311 \
        --platform manylinux_2_28_x86_64 "$PKG==$ORT_VERSION" -d "$CACHE" >&2; then
      die "could not download $PKG==$ORT_VERSION with pip; check access to PyPI (or a mirror via PIP_INDEX_URL)"
    fi
    [[ -f "$wheel_path" ]] || die "pip did not produce $wheel_path (a different wheel was chosen: $(ls "$CACHE"))"
  fi
  got="$(sha_of "$wheel_path")"
  if [[ "$got" != "$SHA" ]]; then
    die "sha256 mismatch for $WHEEL: expected $SHA, got $got; refusing to use it (delete $wheel_path to retry)"
  fi
  log "sha256 verified for $WHEEL"

  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  members=(); for l in "${LIBS[@]}"; do members+=("onnxruntime/capi/$l"); done
  if command -v unzip >/dev/null; then
    unzip -q -o "$wheel_path" "${members[@]}" -d "$tmp" || die "failed to unpack ${members[*]} from $WHEEL"
  else
    "$PYTHON" - "$wheel_path" "$tmp" "${members[@]}" <<'PY' || die "failed to unpack libraries from $WHEEL"
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for m in sys.argv[3:]:
        z.extract(m, sys.argv[2])
PY
  fi
  mkdir -p "$DEST"
  for l in "${LIBS[@]}"; do
    install -m 0755 "$tmp/onnxruntime/capi/$l" "$DEST/$l"
  done
  ln -sfn "libonnxruntime.so.${ORT_VERSION}" "$LIB"
  echo "$SHA" > "$DEST/.wheel-sha256"
  log "unpacked ${LIBS[*]} into $DEST"
fi

if [[ $WITH_CUDA -eq 1 || $WITH_TRT -eq 1 ]]; then
  SITE="$DEST/site"
  pkgs=()
  [[ $WITH_CUDA -eq 1 ]] && pkgs+=("${CUDA_RUNTIME_WHEELS[@]}")
  [[ $WITH_TRT -eq 1 ]] && pkgs+=("${TENSORRT_WHEELS[@]}")
  log "installing ${pkgs[*]} into $SITE (several GB)"
  extra=()
  # tensorrt-cu13-libs on PyPI is a stub that fetches the real wheel from NVIDIA's index.
  [[ $WITH_TRT -eq 1 ]] && extra+=(--extra-index-url https://pypi.nvidia.com)
  pip_cmd install --disable-pip-version-check --upgrade --target "$SITE" "${extra[@]}" "${pkgs[@]}" >&2 \
    || die "pip could not install ${pkgs[*]} (the TensorRT libs also need https://pypi.nvidia.com)"
  # Every directory holding a shared library goes on LD_LIBRARY_PATH (wheel layouts differ by version).
  libdirs="$(find "$SITE" -name 'lib*.so*' -type f -printf '%h\n' | sort -u | tr '\n' ':')"
  {
    echo "# generated by deploy/scripts/setup-ort.sh: source it before running wrn on the GPU"
    echo "export ORT_DYLIB_PATH=\"$LIB\""
    echo "export LD_LIBRARY_PATH=\"$DEST:${libdirs}\${LD_LIBRARY_PATH:-}\""
  } > "$DEST/env.sh"
  log "wrote $DEST/env.sh (source it to find the CUDA/cuDNN/TensorRT libraries)"
fi

[[ -e "$LIB" ]] || die "internal error: $LIB is missing after setup"
echo "$LIB"
