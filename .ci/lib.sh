# Sourced by the side suites: each makes its virtualenv with uv (from PyPI, kept in .ci-tools/),
# which installs in seconds what pip takes minutes for. Needs REPO set by the caller.

ci_uv() {
  local tools="$REPO/.ci-tools"
  if [[ ! -x "$tools/bin/uv" ]]; then
    python3 -m venv "$tools" && "$tools/bin/pip" install --quiet --disable-pip-version-check uv
  fi
  "$tools/bin/uv" "$@"
}

# ci_venv DIR PYTHON LOG [uv pip install arguments...]: a virtualenv at DIR (made if missing)
# holding what the arguments name; on failure, the end of LOG and a non-zero status.
ci_venv() {
  local dir=$1 python=$2 log=$3; shift 3
  if ! { ci_uv venv --quiet --allow-existing --python "$python" "$dir" &&
         VIRTUAL_ENV="$dir" ci_uv pip install --quiet "$@"; } >> "$log" 2>&1; then
    tail -n 30 "$log"; return 1
  fi
}
