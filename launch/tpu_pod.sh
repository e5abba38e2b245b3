#!/usr/bin/env bash
# The same gin config on every worker of a Cloud TPU VM pod slice:
#   launch/tpu_pod.sh --tpu NAME --zone ZONE [--project P] [--repo URL] [--dry_run] -- [imp train flags...]
# Clones (or updates) the repository on each worker, sets it up with ./run.sh setup, then
# starts `imp train` on all workers at once; JAX finds the pod's coordinator itself
# (initialize.cluster=True). --dry_run prints the gcloud commands instead of running them.
set -euo pipefail
tpu="" zone="" project="" repo="${IMP_REPO:-}" dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu) tpu=$2; shift 2 ;;
    --zone) zone=$2; shift 2 ;;
    --project) project=$2; shift 2 ;;
    --repo) repo=$2; shift 2 ;;
    --dry_run) dry_run=1; shift ;;
    --) shift; break ;;
    *) echo "tpu_pod.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ -n "$tpu" && -n "$zone" ]] || { echo "tpu_pod.sh: --tpu and --zone are required" >&2; exit 2; }
[[ -n "$repo" ]] || repo=$(git -C "$(dirname "$0")" remote get-url origin 2>/dev/null || echo "")
[[ -n "$repo" ]] || { echo "tpu_pod.sh: give --repo URL (no git remote to default to)" >&2; exit 2; }
# Everything that reaches the remote shell is quoted: a flag or URL is one word there, never code.
flags=$(printf ' %q' "$@")
quoted_repo=$(printf '%q' "$repo")
remote="if [ -d imp ]; then git -C imp pull -q; else git clone -q $quoted_repo imp; fi && cd imp && ./run.sh setup && .venv/bin/imp train --gin.initialize.cluster=True$flags"
cmd=(gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "$remote")
[[ -n "$project" ]] && cmd+=(--project "$project")
if ((dry_run)); then
  printf '%q ' "${cmd[@]}"; echo
else
  "${cmd[@]}"
fi
