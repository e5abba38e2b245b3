#!/usr/bin/env bash
# Every `imp bench` at accelerator sizes on one accelerator, in under 10 minutes: each report
# (its table, then its JSON line) goes to OUT_DIR/<benchmark>.txt, a failure or overrun to
# the same file with its exit code. docs/benchmarks.md keeps the tables.
#
#   launch/bench_accelerator.sh [OUT_DIR]        # default bench_accelerator/
#   PYTHON=.venv/bin/python SCALE=micro launch/bench_accelerator.sh /tmp/b  # a CPU smoke run
#
# SCALE=b (default) is IMP-B's dense backbone (ViT-B, d 768, 12 layers) on 8x128x128 clips;
# SCALE=micro runs the same commands at the smallest size, to check the script. The input
# pipeline benchmark is left out: it measures the host's CPUs, not the accelerator.
set -uo pipefail
only=${ONLY:-}  # a space-separated subset of the benchmarks below, e.g. ONLY="throughput remat"
cd "$(dirname "$0")/.."
out=${1:-bench_accelerator}
python=${PYTHON:-python3}
scale=${SCALE:-b}
mkdir -p "$out"
if [[ $scale == micro ]]; then
  d=32 layers=2 heads=2 batch=2 frames=2 size=16 matmul=256 depths=2,4 repeats=2 cap=240
  device=cpu
else
  d=768 layers=12 heads=12 batch=32 frames=8 size=128 matmul=8192 depths=12,24 repeats=10 cap=150
  device=cuda
fi

cap=${CAP:-$cap}  # seconds per benchmark

bench() {  # name, args...
  local name=$1
  shift
  [[ -z $only || " $only " == *" $name "* ]] || return 0
  echo "== imp bench $name $*"
  PYTHONUNBUFFERED=1 timeout "$cap" "$python" -m imp.cli bench "$name" --json "$@" \
    >"$out/$name.txt" 2>"$out/$name.log"
  local rc=$?
  [[ $rc -eq 0 ]] || echo "exit $rc (124: past ${cap}s); stderr in $name.log" >>"$out/$name.txt"
  tail -n +1 "$out/$name.txt" | grep -v '^{' || true
}

"$python" -c 'import jax; print("jax", jax.__version__, jax.devices())' | tee "$out/devices.txt"
bench throughput --d_model "$d" --layers "$layers" --heads "$heads" --batch "$batch" \
  --frames "$frames" --size "$size" --matmul "$matmul" --repeats "$repeats" \
  --torch_device "$device"
bench scan_compile --depths "$depths" --d_model "$d" --heads "$heads" --batch 4 --repeats 1
bench remat --size "$scale" --batch "$batch" --frames "$frames" --resolution "$size" \
  --repeats 3
bench moe_overhead --sizes "$scale" --experts 16 --group_size 4096 --batch "$batch" \
  --devices 0 --repeats 3
bench agd_vs_mixed --size "$scale" --image_batch "$batch" --video_batch $((batch / 4)) \
  --frames "$frames" --resolution $((size / 2)) --repeats 3
bench graph_table --size "$scale" --structures 4 --repeats 1
