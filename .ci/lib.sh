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

# ci_workdir KEEP_VARIABLE PREFIX: sets WORK (the directory named by KEEP_VARIABLE when it is set,
# kept for reuse; else a temporary one removed at exit) and SRC, a copy of the repository in it
# (tests run from the copy, against what is installed, and leave nothing in the work tree).
ci_workdir() {
  local keep=$1 prefix=$2
  if [[ -n "${!keep:-}" ]]; then
    WORK="${!keep}"; mkdir -p "$WORK"
  else
    WORK="$(mktemp -d -t "$prefix.XXXXXX")"; trap 'rm -rf "$WORK"' EXIT
  fi
  SRC="$WORK/src"
  rm -rf "$SRC" && mkdir -p "$SRC"
  tar -C "$REPO" --exclude=.git --exclude='.venv*' --exclude=.ci-tools --exclude=__pycache__ \
    --exclude=build --exclude=browser-artifacts -cf - . | tar -C "$SRC" -xf -
  SUMMARY=()
  STATUS=0
}

# ci_pytest LABEL VENV DIR [pytest arguments...]: pytest with VENV's Python in DIR; its last line
# goes into SUMMARY, a failure into STATUS.
ci_pytest() {
  local label=$1 venv=$2 dir=$3; shift 3
  local log="$WORK/${label%% *}.log"
  if (cd "$dir" && "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@" 2>&1 | tee "$log"); then
    SUMMARY+=("$label: $(tail -n 1 "$log")")
  else
    SUMMARY+=("$label: FAILED: $(tail -n 1 "$log")"); STATUS=1
  fi
}

# ci_summary TITLE: what each entry gave; exits with the matrix's status.
ci_summary() {
  echo "=== $1"
  printf '%s\n' "${SUMMARY[@]}"
  exit "$STATUS"
}
