#!/usr/bin/env bash
# Runs the AG2 1.x capture tests (tests/ag2_v1: in-process captures, and unmodified programs
# captured into PostgreSQL through the startup hook) against each AG2 1.x minor release, each
# in a fresh virtualenv: the repository with its collector and pricing extras + that ag2 + the
# classic `autogen` 0.14.1 beside it (both frameworks in one environment) + the test tools.
#
#   .ci/ag2-1x.sh            # the whole matrix, one after the other
#   .ci/ag2-1x.sh 1.2        # only the entries whose label matches
#
# Environment: PYTHON (default python3), AG2_MATRIX_DIR (default: a temporary directory,
# removed at exit; set it to keep and reuse the venvs). PostgreSQL: as for the main suite
# (127.0.0.1:5432 if it answers, else an embedded one; see tests/conftest.py).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
source "$REPO/.ci/lib.sh"
# label|pip requirement(s)
MATRIX=(
  "ag2-1.0|ag2>=1.0,<1.1"
  "ag2-1.1|ag2>=1.1,<1.2"
  "ag2-1.2|ag2>=1.2,<1.3"
)
BESIDE=("autogen[openai]==0.14.1")
TEST_TOOLS=(pytest pytest-timeout hypothesis pyyaml)

ci_workdir AG2_MATRIX_DIR ag2-1x
for entry in "${MATRIX[@]}"; do
  label="${entry%%|*}"
  read -r -a requirements <<< "${entry#*|}"
  if [[ $# -gt 0 && "$label" != *"$1"* ]]; then continue; fi
  venv="$WORK/$label"
  echo "=== $label: ${requirements[*]}"
  if ! ci_venv "$venv" "$PYTHON" "$WORK/$label.pip.log" "$SRC[collector,pricing]" \
        "${requirements[@]}" "${BESIDE[@]}" "${TEST_TOOLS[@]}"; then
    SUMMARY+=("$label: FAILED to install"); STATUS=1; continue
  fi
  version="$("$venv/bin/python" -c 'import ag2; print(ag2.__version__)')"
  echo "--- $label provides ag2 $version"
  # Programs the tests start run the *installed* agent_shim (the startup hook); the tests
  # themselves import the copy's identical source.
  ci_pytest "$label (ag2 $version)" "$venv" "$SRC" tests/ag2_v1
done

ci_summary "AG2 1.x matrix"
