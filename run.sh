#!/usr/bin/env bash
# Sets up .venv (idempotently) and runs the demo or the tests.
#   ./run.sh demo [imp train flags...]   train the embedded demo
#   ./run.sh test [pytest flags...]      run the test suite
#   ./run.sh setup                       only install
set -euo pipefail
cd "$(dirname "$0")"
venv=.venv

find_python() {
  for candidate in python3.13 python3.12 \
      /root/.pyenv/versions/3.12*/bin/python3.12 /root/.pyenv/versions/3.13*/bin/python3.13; do
    if command -v "$candidate" >/dev/null 2>&1 &&
        "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "run.sh: imp needs Python >= 3.12 (3.11's stdlib module 'imp' shadows the package); none found on PATH" >&2
  return 1
}

setup() {
  local stamp="$venv/.installed" want
  want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then return 0; fi
  if [[ ! -x "$venv/bin/python" ]]; then
    "$(find_python)" -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -c constraints.txt -e ".[test]"
  echo "$want" > "$stamp"
}

cmd=${1:-demo}; shift || true
case "$cmd" in
  setup) setup ;;
  demo) setup; exec "$venv/bin/imp" train "$@" ;;
  test) setup; exec "$venv/bin/python" -m pytest -n 2 --dist loadfile "$@" ;;
  *) echo "usage: ./run.sh demo|test|setup [args...]" >&2; exit 2 ;;
esac
