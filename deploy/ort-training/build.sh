#!/usr/bin/env bash
# Build a training-capable ONNX Runtime shared library (on-device training API enabled) from the
# sources Debian's mirror serves, without Docker.
#
# Usage: deploy/ort-training/build.sh [--jobs N] [--force] [--no-userland]
#
#   --jobs N        ninja parallelism (default: nproc)
#   --force         rebuild even when the library is there
#   --no-userland   build directly on this system, which must be Debian trixie (the Dockerfile's
#                   build stage does this); no debootstrap, no chroot, no run-in-userland.sh
#
# Output (all under the git-ignored cache .cache/ort-training/, or $WRN_ORT_TRAINING_CACHE):
#   lib/libonnxruntime.so.1.21.0     the library (+ libonnxruntime.so.1 and libonnxruntime.so links)
#   lib/BUILD-INFO                   versions, sha256, size, build time
#   include/                         the C API headers, training API included
#   run-in-userland.sh               runs a host binary with the userland's loader and libraries
#   root/                            the Debian trixie userland it was built in (its libraries are
#                                    needed at run time: the library needs glibc 2.38 and trixie's
#                                    libonnx/libprotobuf/abseil/re2/cpuinfo)
# Progress goes to stderr; stdout carries only the library path, so
#   export ORT_DYLIB_PATH=$(deploy/ort-training/build.sh)
# works. When lib/libonnxruntime.so already exists it only prints the path (--force rebuilds the
# library; delete .cache/ort-training/ to start from nothing).
#
# Running a host-built program against it (Debian 12's glibc is too old for the library):
#   .cache/ort-training/run-in-userland.sh target/debug/wrn train ...
# which is  <root>/lib64/ld-linux-x86-64.so.2 --library-path <root>/usr/lib/x86_64-linux-gnu:<root>/lib/x86_64-linux-gnu PROGRAM ARGS
# with ORT_DYLIB_PATH set to the library. Only that process uses the userland's libraries; children
# it starts do not.
#
# Steps (each is skipped when its stamp file says it is done):
#   1. debootstrap --variant=buildd trixie into root/ from the Debian mirror in /etc/apt/sources.list
#      (debootstrap is apt-get installed on the host when missing)       ~2 min
#   2. trixie build dependencies (a subset of onnxruntime's Build-Depends, see BUILD_DEPS) ~1 min
#   3. download onnxruntime_1.21.0+dfsg.orig.tar.xz (trixie) and onnxruntime_1.23.2+dfsg-6.1.debian.tar.xz
#      (sid, for debian/patches), check their sha256
#   4. unpack, apply the Debian patches named in patches/debian-series, then patches/*.patch
#   5. cmake + ninja inside the userland (chroot), 595 steps          ~26 min with --jobs 2
#   6. copy the library and headers out, write run-in-userland.sh and BUILD-INFO
# Needs root (debootstrap, chroot) and about 3 GB of disk. Be kind to shared machines:
#   nice -n 19 deploy/ort-training/build.sh --jobs 2
set -euo pipefail

ORT_VERSION="1.21.0"
ORIG_TARBALL="onnxruntime_${ORT_VERSION}+dfsg.orig.tar.xz"
ORIG_SHA256="32df1f82bd6b07b18372c0f387133214905cbde7a586b3ad83f0ed0075f80273" # trixie 1.21.0+dfsg-1
DEBIAN_TARBALL="onnxruntime_1.23.2+dfsg-6.1.debian.tar.xz"
DEBIAN_SHA256="140fe4766a37f1a57451bef8f21174ae43ff206d0dc80e467f52e6e9694c37f9" # sid 1.23.2+dfsg-6.1
POOL_DIR="pool/main/o/onnxruntime"
SUITE="trixie"
# onnxruntime's Build-Depends in trixie, less the Python modules, XNNPACK and DNNL; plus libabsl-dev,
# which Debian's build does not use (it disables abseil) and 1.21.0 needs. python3 (the interpreter
# only) runs tools/ci_build/gen_def.py, which writes the library's linker script at step ~582.
BUILD_DEPS=(
  g++ cmake ninja-build pkgconf patch python3
  libabsl-dev libboost-dev libcpuinfo-dev libdlpack-dev libeigen3-dev libflatbuffers-dev
  libhowardhinnant-date-dev libmsgsl-dev libonnx-dev libprotobuf-dev protobuf-compiler
  libpthreadpool-dev libre2-dev libsafeint-dev libpng-dev nlohmann-json3-dev zlib1g-dev
)

# gcc 14 warns (and ORT builds with -Werror) where 1.21.0 is fine
CXX_FLAGS_EXTRA="-Wno-error=maybe-uninitialized -Wno-error=array-bounds -Wno-error=dangling-reference -Wno-error=stringop-overflow"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CACHE="${WRN_ORT_TRAINING_CACHE:-$REPO/.cache/ort-training}"
ROOT="$CACHE/root"
LIB="$CACHE/lib"
JOBS="$(nproc)"
FORCE=0
USERLAND=1

log() { printf '[ort-training] %s\n' "$*" >&2; }
die() { printf '[ort-training] error: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --jobs) JOBS="$2"; shift 2 ;;
    --jobs=*) JOBS="${1#--jobs=}"; shift ;;
    --force) FORCE=1; shift ;;
    --no-userland) USERLAND=0; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed 's/^# \{0,1\}//;$d' >&2; exit 0 ;;
    *) die "unknown argument: $1" ;;
  esac
done

if [ "$FORCE" = 0 ] && [ -e "$LIB/libonnxruntime.so" ]; then
  log "already built: $(readlink -f "$LIB/libonnxruntime.so")"
  echo "$LIB/libonnxruntime.so"
  exit 0
fi

[ "$(id -u)" = 0 ] || die "needs root (debootstrap and chroot, or apt-get); or use deploy/ort-training/Dockerfile"
mkdir -p "$CACHE/src" "$LIB"
# One build at a time: a second run would wipe the tree under the first.
exec 9>"$CACHE/.lock"
flock -n 9 || die "another build.sh is running on $CACHE (lock: $CACHE/.lock)"
if [ "$USERLAND" = 0 ]; then
  # shellcheck disable=SC1091
  . /etc/os-release
  [ "${VERSION_CODENAME:-}" = "$SUITE" ] || die "--no-userland needs Debian $SUITE, this is ${PRETTY_NAME:-unknown}"
  ROOT=""                 # commands run here, the build tree is $CACHE/build
  BUILD_IN="$CACHE/build"
else
  BUILD_IN="/build"       # the build tree as the chroot sees it
fi
BUILD="$ROOT$BUILD_IN"    # ... and as this script sees it

# The Debian mirror the host already uses (first http(s) URI ending in /debian), or $DEBIAN_MIRROR.
find_mirror() {
  local m
  m="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
      | grep -oE 'https?://[^ ]+/debian/?( |$)' | grep -v -- '-security' | head -n1 | tr -d ' ' || true)"
  echo "${m%/}"
}
MIRROR="${DEBIAN_MIRROR:-$(find_mirror)}"
[ -n "$MIRROR" ] || MIRROR="http://deb.debian.org/debian"
log "mirror: $MIRROR"

in_root() {
  if [ "$USERLAND" = 1 ]; then
    chroot "$ROOT" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 \
      DEBIAN_FRONTEND=noninteractive "$@"
  else
    env DEBIAN_FRONTEND=noninteractive "$@"
  fi
}

# 1. userland
if [ "$USERLAND" = 1 ] && [ ! -e "$ROOT/.wrn-debootstrap-done" ]; then
  if ! command -v debootstrap >/dev/null; then
    log "installing debootstrap on the host"
    apt-get update -q >&2 && apt-get install -y -q debootstrap >&2
  fi
  rm -rf "$ROOT"
  log "debootstrap --variant=buildd $SUITE $ROOT"
  debootstrap --variant=buildd "$SUITE" "$ROOT" "$MIRROR" > "$CACHE/debootstrap.log" 2>&1 \
    || { tail -n 20 "$CACHE/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }
  touch "$ROOT/.wrn-debootstrap-done"
fi

# 2. build dependencies
if [ "$USERLAND" = 0 ]; then
  log "installing build dependencies"
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${BUILD_DEPS[@]}"; } \
    > "$CACHE/apt.log" 2>&1 || { tail -n 20 "$CACHE/apt.log" >&2; die "apt-get failed (log: $CACHE/apt.log)"; }
elif [ "$(cat "$ROOT/.wrn-deps-done" 2>/dev/null)" != "${BUILD_DEPS[*]}" ]; then
  cp /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
  printf 'deb %s %s main\ndeb-src %s %s main\n' "$MIRROR" "$SUITE" "$MIRROR" "$SUITE" > "$ROOT/etc/apt/sources.list"
  log "installing build dependencies in the userland"
  { in_root apt-get update -q && in_root apt-get install -y -q --no-install-recommends "${BUILD_DEPS[@]}"; } \
    > "$CACHE/apt.log" 2>&1 || { tail -n 20 "$CACHE/apt.log" >&2; die "apt-get failed (log: $CACHE/apt.log)"; }
  echo "${BUILD_DEPS[*]}" > "$ROOT/.wrn-deps-done"
fi

# 3. sources, pinned by sha256
fetch() { # name sha256
  local f="$CACHE/src/$1"
  if [ -e "$f" ] && echo "$2  $f" | sha256sum -c --status; then return 0; fi
  log "downloading $1"
  curl -fsSL --retry 3 -o "$f.part" "$MIRROR/$POOL_DIR/$1" || die "download failed: $MIRROR/$POOL_DIR/$1"
  echo "$2  $f.part" | sha256sum -c --status || die "sha256 mismatch for $1 (expected $2)"
  mv "$f.part" "$f"
}
fetch "$ORIG_TARBALL" "$ORIG_SHA256"
fetch "$DEBIAN_TARBALL" "$DEBIAN_SHA256"

# 4. unpack and patch. The tree is kept while the sources, patches and options are unchanged, so a
# build that stopped half-way resumes where ninja left off; anything else starts it afresh.
SRC="$BUILD/onnxruntime"
TREE_KEY="$( { echo "$ORIG_SHA256 $DEBIAN_SHA256 $CXX_FLAGS_EXTRA ${BUILD_DEPS[*]}"; cat "$HERE/patches/debian-series" "$HERE"/patches/*.patch "$0"; } | sha256sum | cut -d' ' -f1)"
if [ "$FORCE" = 1 ] || [ ! -e "$BUILD/.wrn-ninja-done" ]; then
 if [ "$FORCE" = 1 ] || [ "$(cat "$BUILD/.wrn-tree-key" 2>/dev/null)" != "$TREE_KEY" ]; then
  log "unpacking and patching"
  rm -rf "$BUILD" && mkdir -p "$BUILD/debian-tarball"
  tar -C "$BUILD" -xf "$CACHE/src/$ORIG_TARBALL"
  mv "$BUILD/onnxruntime-$ORT_VERSION" "$SRC"
  tar -C "$BUILD/debian-tarball" -xf "$CACHE/src/$DEBIAN_TARBALL"
  while read -r p _; do
    case "$p" in ''|'#'*) continue ;; esac
    patch -d "$SRC" -p1 -s -N --no-backup-if-mismatch < "$BUILD/debian-tarball/debian/patches/$p" \
      || die "Debian patch $p does not apply"
  done < "$HERE/patches/debian-series"
  for p in "$HERE"/patches/*.patch; do
    patch -d "$SRC" -p1 -s -N --no-backup-if-mismatch < "$p" || die "patch $(basename "$p") does not apply"
  done
  echo "$TREE_KEY" > "$BUILD/.wrn-tree-key"
 else
  log "resuming the build in $BUILD"
 fi

  # 5. configure and build inside the userland
  cat > "$BUILD/build-inside.sh" <<EOF
#!/bin/sh
set -e
cd $BUILD_IN
cmake -S onnxruntime/cmake -B out -G Ninja \\
  -DCMAKE_BUILD_TYPE=Release \\
  -DFETCHCONTENT_FULLY_DISCONNECTED=ON \\
  -DFETCHCONTENT_TRY_FIND_PACKAGE_MODE=ALWAYS \\
  -Donnxruntime_BUILD_SHARED_LIB=ON \\
  -Donnxruntime_ENABLE_TRAINING_APIS=ON \\
  -Donnxruntime_ENABLE_PYTHON=OFF \\
  -Donnxruntime_BUILD_UNIT_TESTS=OFF \\
  -Donnxruntime_BUILD_BENCHMARKS=OFF \\
  -Donnxruntime_USE_XNNPACK=OFF \\
  -Donnxruntime_USE_DNNL=OFF \\
  -Donnxruntime_USE_PREINSTALLED_EIGEN=ON \\
  -Deigen_SOURCE_PATH=/usr/include/eigen3 \\
  -Donnxruntime_USE_FULL_PROTOBUF=ON \\
  -Donnxruntime_ENABLE_CPUINFO=ON \\
  -Donnxruntime_DISABLE_ABSEIL=OFF \\
  -DCMAKE_CXX_FLAGS="$CXX_FLAGS_EXTRA" \\
  > $BUILD_IN/configure.log 2>&1
ninja -C out -j $JOBS onnxruntime > $BUILD_IN/ninja.log 2>&1
EOF
  chmod +x "$BUILD/build-inside.sh"
  log "building (ninja -j $JOBS; logs: $BUILD/configure.log, $BUILD/ninja.log)"
  start=$(date +%s)
  in_root "$BUILD_IN/build-inside.sh" || { tail -n 30 "$BUILD/ninja.log" "$BUILD/configure.log" >&2 2>/dev/null; die "build failed"; }
  end=$(date +%s)
  echo "$((end - start)) $JOBS" > "$BUILD/.wrn-ninja-done"
fi
read -r BUILD_SECONDS BUILD_JOBS < "$BUILD/.wrn-ninja-done"

# 6. results
OUT="$BUILD/out"
[ -e "$OUT/libonnxruntime.so.$ORT_VERSION" ] || die "no $OUT/libonnxruntime.so.$ORT_VERSION after the build"
rm -f "$LIB"/libonnxruntime.so*
cp "$OUT/libonnxruntime.so.$ORT_VERSION" "$LIB/"
ln -s "libonnxruntime.so.$ORT_VERSION" "$LIB/libonnxruntime.so.1"
ln -s "libonnxruntime.so.$ORT_VERSION" "$LIB/libonnxruntime.so"
rm -rf "$CACHE/include" && mkdir -p "$CACHE/include"
cp "$SRC"/include/onnxruntime/core/session/onnxruntime_*.h "$CACHE/include/"
cp "$SRC"/orttraining/orttraining/training_api/include/onnxruntime_training_*.h "$CACHE/include/"

if [ "$USERLAND" = 1 ]; then
  cat > "$CACHE/run-in-userland.sh" <<EOF
#!/bin/sh
# Run a host program with the trixie userland's loader and libraries, and ORT_DYLIB_PATH set to the
# training-capable ONNX Runtime built by deploy/ort-training/build.sh.
ROOT="$ROOT"
export ORT_DYLIB_PATH="\${ORT_DYLIB_PATH:-$LIB/libonnxruntime.so}"
exec "\$ROOT/lib64/ld-linux-x86-64.so.2" --library-path "$LIB:\$ROOT/usr/lib/x86_64-linux-gnu:\$ROOT/lib/x86_64-linux-gnu" "\$@"
EOF
  chmod +x "$CACHE/run-in-userland.sh"
fi

{
  echo "onnxruntime $ORT_VERSION with the on-device training API (onnxruntime_ENABLE_TRAINING_APIS=ON)"
  echo "sources: $ORIG_TARBALL sha256 $ORIG_SHA256"
  echo "         $DEBIAN_TARBALL sha256 $DEBIAN_SHA256 (debian/patches, see patches/debian-series)"
  echo "local patches: $(cd "$HERE/patches" && ls ./*.patch | tr '\n' ' ')"
  if [ "$USERLAND" = 1 ]; then
    echo "userland: debian $SUITE (debootstrap --variant=buildd) from $MIRROR, at $ROOT"
  else
    echo "built directly on debian $SUITE (--no-userland)"
  fi
  echo "library: libonnxruntime.so.$ORT_VERSION $(stat -c %s "$LIB/libonnxruntime.so.$ORT_VERSION") bytes sha256 $(sha256sum "$LIB/libonnxruntime.so.$ORT_VERSION" | cut -d' ' -f1)"
  echo "build: ${BUILD_SECONDS}s (cmake + ninja -j $BUILD_JOBS) on $(nproc) cores, recorded $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "needs: $(in_root objdump -p "$BUILD_IN/out/libonnxruntime.so.$ORT_VERSION" | awk '/NEEDED/ {print $2}' | tr '\n' ' ')"
  echo "toolchain and libraries:"
  in_root dpkg-query -W -f '  ${Package} ${Version}\n' g++-14 cmake libabsl-dev libonnx-dev libprotobuf-dev \
    libre2-dev libcpuinfo-dev libflatbuffers-dev libeigen3-dev libboost-dev libsafeint-dev libc6 2>/dev/null || true
} > "$LIB/BUILD-INFO"
log "$(grep '^library:\|^build:' "$LIB/BUILD-INFO" | tr '\n' ' ')"
echo "$LIB/libonnxruntime.so"
