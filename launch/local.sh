#!/usr/bin/env bash
# One process on this machine: `launch/local.sh [imp train flags...]`.
# Uses the checkout's .venv (created by ./run.sh setup).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/run.sh" setup
exec "$root/.venv/bin/imp" train "$@"
