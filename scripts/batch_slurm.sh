#!/usr/bin/env bash
# A SLURM job array over one manifest: every array task runs on one node and takes the next row no
# other task holds (per-row claims in OUT), so tasks may start, end, fail and be resubmitted freely.
#
#   sbatch --array=0-3 scripts/batch_slurm.sh       # 4 nodes working through one manifest
#   sbatch --array=2 scripts/batch_slurm.sh         # one more task (or a re-run): joins the same queue
#
# Set CKPT_DIR, MANIFEST and OUT in the environment (sbatch passes it on); relative paths are read in
# the folder sbatch was called from (where SLURM starts the job), and OUT must be on a file system every
# node sees. Each task runs NGPU GPUs of its node (default: SLURM_GPUS_ON_NODE), GROUP GPUs per video,
# through the installed `steadydancer` (or `python -m steadydancer`). For a fixed split instead of the
# queue pass `--shard slurm` (part (TASK_ID - MIN) / STEP of COUNT; stepped arrays such as --array=0-12:4
# work). Resubmit after failures or time-outs: finished rows are skipped, a dead task's rows are taken
# over once their claims are older than --claim_timeout. Written for bash 4.2 and later.
#SBATCH --job-name=steadydancer-batch
#SBATCH --nodes=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-gpu=8
#SBATCH --time=24:00:00
#SBATCH --output=steadydancer-batch-%A_%a.log
set -euo pipefail
# sbatch runs a copy of this script from its spool folder: no path is taken from where the script lies
: "${CKPT_DIR:?set CKPT_DIR to the SteadyDancer-14B folder}"
: "${MANIFEST:?set MANIFEST to the manifest}"
: "${OUT:?set OUT to the output folder (shared by all array tasks)}"
NGPU=${NGPU:-${SLURM_GPUS_ON_NODE:-8}}
GROUP=${GROUP:-1}
SIZE=${SIZE:-1024*576}
TORCHRUN=${TORCHRUN:-torchrun}
if [ "$GROUP" -gt 1 ]; then
    set -- --ulysses_size "$GROUP" --dit_fsdp --t5_fsdp "$@"
fi
set -- batch --manifest "$MANIFEST" --out "$OUT" --ckpt_dir "$CKPT_DIR" --size "$SIZE" \
    --sample_guide_scale 5.0 --condition_guide_scale 1.0 --end_cond_cfg 0.4 "$@"
echo "steadydancer-batch: job ${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID:-?}} task ${SLURM_ARRAY_TASK_ID:-?} on $(hostname) in $PWD, $NGPU GPU(s), $GROUP per video"
if command -v steadydancer >/dev/null 2>&1; then
    exec "$TORCHRUN" --standalone --nproc_per_node="$NGPU" --no-python steadydancer "$@"
fi
exec "$TORCHRUN" --standalone --nproc_per_node="$NGPU" -m steadydancer "$@"
