#!/usr/bin/env bash
# Runs tests/phoenix: the example workflow exported to a real Phoenix server, read back through
# Phoenix's own REST API. Phoenix (arize-phoenix, ~850 MB of dependencies) lives in a virtualenv
# of its own so that its pins never meet ours; the tests run in the repository's .venv (made here
# when missing) and start Phoenix from that other venv on loopback.
#
# Environment: PYTHON (default python3), PHOENIX_VENV (default: a temporary directory, removed at
# exit; set it to keep and reuse the venv). uv's cache is reused between runs.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
source "$REPO/.ci/lib.sh"
cd "$REPO"

if [[ -n "${PHOENIX_VENV:-}" ]]; then
  VENV="$PHOENIX_VENV"
else
  WORK="$(mktemp -d -t phoenix.XXXXXX)"; trap 'rm -rf "$WORK"' EXIT
  VENV="$WORK/venv"
fi
if [[ ! -x .venv/bin/pytest ]]; then
  "$PYTHON" -m venv .venv && .venv/bin/pip install --quiet ".[test]"
fi
if [[ ! -x "$VENV/bin/phoenix" ]]; then
  started=$SECONDS
  ci_venv "$VENV" "$PYTHON" "$VENV.pip.log" arize-phoenix
  echo "--- Phoenix installed in $((SECONDS - started)) s: $(du -sh "$VENV" | cut -f1)"
fi
echo "=== Phoenix $("$VENV/bin/python" -c 'import phoenix; print(phoenix.__version__)')"
PHOENIX_BIN="$VENV/bin/phoenix" .venv/bin/pytest tests/phoenix -q -p no:cacheprovider
