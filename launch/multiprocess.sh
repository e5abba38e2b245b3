#!/usr/bin/env bash
# N JAX processes on this machine, one cluster (gloo collectives on CPU):
#   launch/multiprocess.sh N [imp train flags...]
# Environment: DEVICES_PER_PROCESS (virtual CPU devices each, default 1), PORT (coordinator
# port, default 12355), LOG_DIR (default ./logs): process i logs to LOG_DIR/process_i.log.
# Each process feeds its own slice of the global batch; the first one writes the outputs.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
n=${1:?usage: launch/multiprocess.sh N [imp train flags...]}
shift
port=${PORT:-12355}
log_dir=${LOG_DIR:-logs}
mkdir -p "$log_dir"
"$root/run.sh" setup || exit 1
pids=()
for ((i = 0; i < n; i++)); do
  IMP_COORDINATOR_ADDRESS="127.0.0.1:$port" IMP_NUM_PROCESSES="$n" IMP_PROCESS_ID="$i" \
    XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-1}" \
    "$root/.venv/bin/imp" train "$@" > "$log_dir/process_$i.log" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    echo "process $i failed; see $log_dir/process_$i.log" >&2
    status=1
  fi
done
exit $status
