#!/usr/bin/env bash
# The web view's tests in a real browser (tests/browser): Debian's chromium, driven by
# Playwright for Python, in a virtualenv of their own (the `browser` extra). Playwright's own
# browser downloads are not used (they need hosts other than the package registries).
#
# Environment: PYTHON (default python3); BROWSER_VENV (default: a temporary directory, removed at
# exit; set it to keep and reuse the venv); CMBAGENT_BROWSER_ARTIFACTS (screenshots, default
# browser-artifacts/ in the repository).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
source "$REPO/.ci/lib.sh"

if [[ ! -x /usr/bin/chromium ]]; then
  echo "=== installing Debian's chromium"
  sudo=""; [[ "$(id -u)" == 0 ]] || sudo="sudo"
  log="$(mktemp)"
  if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
         $sudo apt-get install -y -qq --no-install-recommends chromium; } > "$log" 2>&1; then
    tail -n 30 "$log"; exit 1
  fi
  rm -f "$log"
fi
echo "=== $(/usr/bin/chromium --version 2>/dev/null || echo chromium)"

if [[ -n "${BROWSER_VENV:-}" ]]; then
  VENV="$BROWSER_VENV"
else
  VENV="$(mktemp -d -t browser-venv.XXXXXX)"; trap 'rm -rf "$VENV" "$VENV.pip.log"' EXIT
fi
ci_venv "$VENV" "$PYTHON" "$VENV.pip.log" "$REPO[browser]"

cd "$REPO"
"$VENV/bin/python" -m pytest -o addopts= tests/browser -q -p no:cacheprovider
echo "=== screenshots in ${CMBAGENT_BROWSER_ARTIFACTS:-$REPO/browser-artifacts}"
