#!/usr/bin/env bash
# Runs the zero-code CMBAgent capture tests against the real CMBAgent, each in a fresh Python
# 3.12 virtualenv (CMBAgent needs 3.12; they clash with each other and with the main venv):
#   released  the newest release on PyPI (cmbagent-update), tests/cmbagent_released
#   fork      the fork with phases and callbacks, vendored in shared/vendor/cmbagent-fork
#             (see its VENDORED.md), tests/cmbagent_fork
# Each venv also holds the collector: the tests run CMBAgent's real workflows offline (a scripted
# model) into a real collector and PostgreSQL. 6 to 8 minutes with the venvs kept.
#
#   .ci/cmbagent-versions.sh           # both
#   .ci/cmbagent-versions.sh fork      # only the entries whose label matches
#
# Environment: PYTHON312 (default: pyenv's newest 3.12, else python3.12 on PATH),
# CMBAGENT_FORK_SOURCE (default: ../shared/vendor/cmbagent-fork beside the repository),
# CMBAGENT_MATRIX_DIR (default: a temporary directory removed at exit; set it to keep the venvs).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FORK="${CMBAGENT_FORK_SOURCE:-$REPO/../shared/vendor/cmbagent-fork}"
source "$REPO/.ci/lib.sh"
python312() {  # the first candidate that really is a Python 3.12 (a pyenv shim may not be)
  local candidate
  for candidate in "${PYTHON312:-}" $(ls -d "$HOME"/.pyenv/versions/3.12*/bin/python3.12 \
      2>/dev/null | sort -V -r) python3.12; do
    if [[ -n "$candidate" ]] && "$candidate" -c \
        'import sys; assert sys.version_info[:2] == (3, 12)' > /dev/null 2>&1; then
      echo "$candidate"; return
    fi
  done
  echo "CMBAgent needs Python 3.12: set PYTHON312 to its interpreter" >&2; exit 1
}
PYTHON312="$(python312)"
# label|tests|pip requirements. The release imports matplotlib without declaring it and breaks
# with mistralai 2; the fork's list is its VENDORED.md's (crewai and langchain are optional).
MATRIX=(
  "released|tests/cmbagent_released|cmbagent-update==0.0.1.post68 mistralai<2 matplotlib"
  "fork|tests/cmbagent_fork|ag2[openai,websurfer]==0.10.5 ruamel.yaml jsonref==1.1.0 pandas ipython matplotlib structlog sqlalchemy>=2.0 alembic psycopg2-binary psycopg[binary] pydantic anthropic python-dotenv requests cobaya google-genai mistralai>=2"
)
TEST_TOOLS=(pytest pytest-timeout)

ci_workdir CMBAGENT_MATRIX_DIR cmbagent-matrix
# shared/ is read-only: the fork is copied too.
rm -rf "$WORK/fork-src" && cp -r "$FORK" "$WORK/fork-src"

for entry in "${MATRIX[@]}"; do
  IFS='|' read -r label tests requirements <<< "$entry"
  if [[ $# -gt 0 && "$label" != *"$1"* ]]; then continue; fi
  read -r -a requirements <<< "$requirements"
  venv="$WORK/$label"
  echo "=== $label: ${requirements[*]}"
  start=$SECONDS
  if [[ "$label" == fork ]]; then
    # Editable: its wheel leaves out cmbagent/keywords/*.pkl. Its own dependency list is not
    # installable as declared, hence --no-deps and the list above.
    ci_venv "$venv" "$PYTHON312" "$WORK/$label.pip.log" --no-deps -e "$WORK/fork-src" \
      || { SUMMARY+=("$label: FAILED to install"); STATUS=1; continue; }
  fi
  if ! ci_venv "$venv" "$PYTHON312" "$WORK/$label.pip.log" "$SRC[collector]" "${requirements[@]}" \
        "${TEST_TOOLS[@]}"; then
    SUMMARY+=("$label: FAILED to install"); STATUS=1; continue
  fi
  echo "--- $label installed in $((SECONDS - start)) s"
  # Inside the test folder, so that the *installed* agent_shim is tested; --confcutdir keeps
  # tests/conftest.py (the collector's fixtures) out.
  ci_pytest "$label" "$venv" "$SRC/$tests" . --rootdir "$SRC" --confcutdir .
done

ci_summary "CMBAgent versions"
