#!/usr/bin/env bash
# Runs the AG2 capture tests (tests/ag2) against each AG2 distribution the shim supports, each in
# a fresh virtualenv: the repository's agent side (pyzmq + msgpack) + that distribution + the
# test tools. Distributions clash (they all provide the module `autogen`), hence one venv each.
#
#   .ci/ag2-versions.sh            # the whole matrix, one after the other
#   .ci/ag2-versions.sh fork       # only the entries whose label matches
#
# Environment: PYTHON (default python3), AG2_MATRIX_DIR (default: a temporary directory,
# removed at exit; set it to keep and reuse the venvs). uv's cache is reused between runs.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
source "$REPO/.ci/lib.sh"
# label|pip requirement(s); cmbagent_autogen imports IPython without declaring it.
MATRIX=(
  "ag2-latest-0.x|ag2>=0.14,<1.0"
  "ag2-0.9|ag2>=0.9.10,<0.10"
  "cmbagent_autogen|cmbagent_autogen ipython"
)
TEST_TOOLS=(pytest pytest-timeout hypothesis)

ci_workdir AG2_MATRIX_DIR ag2-matrix
for entry in "${MATRIX[@]}"; do
  label="${entry%%|*}"
  read -r -a requirements <<< "${entry#*|}"
  if [[ $# -gt 0 && "$label" != *"$1"* ]]; then continue; fi
  venv="$WORK/$label"
  echo "=== $label: ${requirements[*]}"
  if ! ci_venv "$venv" "$PYTHON" "$WORK/$label.pip.log" "$SRC" "${requirements[@]}" \
        "${TEST_TOOLS[@]}"; then
    SUMMARY+=("$label: FAILED to install"); STATUS=1; continue
  fi
  version="$("$venv/bin/python" -c 'import autogen; print(autogen.__version__)')"
  echo "--- $label provides autogen $version"
  # Run inside tests/ag2 so that the *installed* agent_shim is tested, not the source tree's
  # (which is not on sys.path from there). --confcutdir keeps tests/conftest.py (collector
  # fixtures, which need the collector's dependencies) out of this run.
  ci_pytest "$label (autogen $version)" "$venv" "$SRC/tests/ag2" . --rootdir "$SRC" --confcutdir .
done

ci_summary "AG2 matrix"
