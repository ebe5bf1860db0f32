#!/usr/bin/env bash
# The README's "test" command (and CI's, through .ci/run): from a fresh clone to passing tests.
#
#   deploy/scripts/test.sh [--clippy]
#
# Steps, each timed; the first failure stops the run with a non-zero exit status:
#   1. prepare: system packages, .venv, ONNX Runtime (deploy/scripts/run.sh --prepare-only);
#   2. test assets: tests/python/generate_all.sh (models wide_resnet50_2, wide_resnet101_2 and
#      wrn_16_4 with seeded weights, photos, torchvision/onnxruntime reference outputs);
#   3. Python unit tests: python -m unittest discover -s tests/python;
#   4. Rust: WRN_REQUIRE_TEST_ASSETS=1 cargo test --all-targets --locked -- --show-output (a
#      missing asset fails; --show-output prints every test's figures and SKIP lines, which
#      cargo otherwise swallows for passing tests), then the SKIP lines again as a summary;
#   5. deployment: deploy/scripts/check-deploy.sh (kustomize, schemas, lints, invariants, and the
#      pod smoke test with the target/debug/wrn binary built in step 4);
#   6. observability: deploy/grafana and deploy/prometheus against src/metrics.rs and the README
#      (tests/python/check_alerts.py, with PyYAML from check-deploy's .cache/deploy-venv), and
#      `promtool check rules` + `promtool test rules` with promtool taken from Debian's prometheus
#      package (apt-get download, unpacked into .cache; skipped with a warning without apt-get);
#   7. (--clippy or WRN_TEST_CLIPPY=1) cargo clippy --all-targets -- -D warnings.
# Runs as root or as a user with sudo; needs no GPU. From scratch on 2 idle cores: about 9 minutes
# (4.5 before cargo test, which compiles and runs in about 4); several times that on busy cores.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
CLIPPY="${WRN_TEST_CLIPPY:-0}"
for arg in "$@"; do
  case "$arg" in
    --clippy) CLIPPY=1 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "test.sh: unknown argument '$arg' (usage: test.sh [--clippy])" >&2; exit 2 ;;
  esac
done
export PATH="$HOME/.cargo/bin:$PATH"

T0=$(date +%s)
declare -a SUMMARY=()
CURRENT=""
STEP_T=0
finish() {
  local rc=$?
  [[ -n "$CURRENT" ]] && SUMMARY+=("$(printf '%-58s %5ss  FAILED (exit %s)' "$CURRENT" "$(( $(date +%s) - STEP_T ))" "$rc")")
  echo
  echo "test.sh: step times"
  local l; for l in "${SUMMARY[@]}"; do echo "  $l"; done
  if [[ $rc -eq 0 ]]; then
    echo "test.sh: PASSED in $(( $(date +%s) - T0 ))s"
  else
    echo "test.sh: FAILED in $(( $(date +%s) - T0 ))s (exit $rc)"
  fi
}
trap finish EXIT
run_step() {
  CURRENT="$1"; shift
  STEP_T=$(date +%s)
  echo
  echo "== test.sh: $CURRENT =="
  "$@"
  SUMMARY+=("$(printf '%-58s %5ss  ok' "$CURRENT" "$(( $(date +%s) - STEP_T ))")")
  CURRENT=""
}

PY="$ROOT/.venv/bin/python"

promtool_checks() {
  local dir="$ROOT/.cache/promtool" tool="$ROOT/.cache/promtool/usr/bin/promtool"
  if [[ ! -x "$tool" ]]; then
    if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
      echo "test.sh: WARNING: no apt-get/dpkg-deb to fetch promtool; rules were checked by check_alerts.py only"
      return 0
    fi
    mkdir -p "$dir"
    # Debian's prometheus package carries promtool (a static Go binary); only unpack it.
    if ! (cd "$dir" && apt-get download prometheus >/dev/null 2>&1); then
      [[ $(id -u) -eq 0 ]] && apt-get update -qq >/dev/null 2>&1 || true
      (cd "$dir" && apt-get download prometheus >/dev/null)
    fi
    dpkg-deb -x "$(ls "$dir"/prometheus_*.deb | head -1)" "$dir/x"
    mkdir -p "$dir/usr/bin" && mv "$dir/x/usr/bin/promtool" "$tool"
    rm -rf "$dir/x" "$dir"/prometheus_*.deb
  fi
  "$tool" --version 2>&1 | head -1
  "$tool" check rules "$ROOT/deploy/prometheus/wrn-alerts.yaml"
  (cd "$ROOT/deploy/prometheus" && "$tool" test rules wrn-alerts.test.yaml)
}

observability() {
  "$ROOT/.cache/deploy-venv/bin/python" tests/python/check_alerts.py
  promtool_checks
}

run_step "1 prepare (system packages, .venv, ONNX Runtime)" deploy/scripts/run.sh --prepare-only
assets() {
  tests/python/generate_all.sh
  # The hostile-input corpus of tests/hostile_inputs.rs, while generate_all.sh does not make it.
  if ! grep -q make_corpus tests/python/generate_all.sh; then
    "$PY" tests/python/make_corpus.py --photo models/photos/rocket.jpg --out tests/data/generated/corpus
  fi
}
run_step "2 test assets (tests/python/generate_all.sh)" assets
run_step "3 Python unit tests (unittest, tests/python)" "$PY" -m unittest discover -s tests/python -v
ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$ROOT/.ort/cpu/libonnxruntime.so}"
export ORT_DYLIB_PATH
rust_tests() {
  local log="$ROOT/target/cargo-test.log"
  mkdir -p "$ROOT/target"
  local rc=0
  env WRN_REQUIRE_TEST_ASSETS=1 cargo test --all-targets --locked -- --show-output 2>&1 | tee "$log" || rc=$?
  echo
  echo "test.sh: skipped tests (SKIP lines):"
  grep -E '^SKIP ' "$log" | sed 's/^/  /' || echo "  none"
  return "$rc"
}
run_step "4 cargo test --all-targets (WRN_REQUIRE_TEST_ASSETS=1)" rust_tests
run_step "5 deployment checks (deploy/scripts/check-deploy.sh)" \
  env WRN_BIN="$ROOT/target/debug/wrn" bash deploy/scripts/check-deploy.sh
run_step "6 dashboard and alert rules (check_alerts.py, promtool)" observability
if [[ "$CLIPPY" == 1 ]]; then
  run_step "7 cargo clippy --all-targets -- -D warnings" cargo clippy --all-targets --locked -- -D warnings
fi
