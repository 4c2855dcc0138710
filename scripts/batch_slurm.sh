#!/usr/bin/env bash
# A SLURM job array over one manifest: each array task makes its part of the rows on one node.
#
#   sbatch --array=0-3 scripts/batch_slurm.sh          # 4 independent jobs, 1/4 of the rows each
#
# Set CKPT_DIR, MANIFEST and OUT in the environment (sbatch passes it on) or edit the defaults
# below; OUT must be on a file system every node sees. Each task runs scripts/batch_node.sh
# (NGPU GPUs of its node, GROUP GPUs per video); `steadydancer batch` takes its part from
# SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT. Resubmit the same array after failures or
# time-outs: finished rows are skipped, interrupted ones made again.
#SBATCH --job-name=steadydancer-batch
#SBATCH --nodes=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-gpu=8
#SBATCH --time=24:00:00
#SBATCH --output=steadydancer-batch-%A_%a.log
set -euo pipefail
# sbatch runs a copy of this script from the spool folder: find the repository from the submit folder
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
[ -f scripts/batch_node.sh ] || { echo "error: submit from the repository root (scripts/batch_node.sh not found in $PWD)" >&2; exit 1; }
: "${CKPT_DIR:?set CKPT_DIR to the SteadyDancer-14B folder}"
: "${MANIFEST:?set MANIFEST to the manifest}"
: "${OUT:?set OUT to the output folder (shared by all array tasks)}"
export NGPU=${NGPU:-${SLURM_GPUS_ON_NODE:-8}}
exec bash scripts/batch_node.sh "$@"
