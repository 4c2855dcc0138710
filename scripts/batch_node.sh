#!/usr/bin/env bash
# One node, N GPUs: every pair of a manifest, the models loaded once per GPU.
#
#   CKPT_DIR=/path/SteadyDancer-14B MANIFEST=pairs.csv OUT=results NGPU=8 scripts/batch_node.sh [extra flags]
#
# GROUP (default 1) GPUs make each video together (Ulysses sequence parallelism, FSDP-sharded DiT
# and T5 when GROUP > 1); NGPU / GROUP videos are made at a time. GROUP must divide NGPU and the
# DiT's 40 heads (1, 2, 4, 5, 8). Extra flags go to steadydancer batch (e.g. --frame_num 49
# --base_seed 42 --target_fps 16). Run it again after an interruption: finished rows are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${CKPT_DIR:?set CKPT_DIR to the SteadyDancer-14B folder}"
: "${MANIFEST:?set MANIFEST to a manifest (steadydancer manifest --images DIR --videos DIR --out pairs.csv)}"
: "${OUT:?set OUT to the output folder}"
NGPU=${NGPU:-$(nvidia-smi -L 2>/dev/null | grep -c "^GPU" || true)}
if ! [ "$NGPU" -ge 1 ] 2>/dev/null; then
    echo "error: NGPU=$NGPU: expected the number of GPUs to use (>= 1); set NGPU (nvidia-smi found none)" >&2
    exit 1
fi
GROUP=${GROUP:-1}
SIZE=${SIZE:-1024*576}
parallel=()
if [ "$GROUP" -gt 1 ]; then
    parallel=(--ulysses_size "$GROUP" --dit_fsdp --t5_fsdp)
fi

exec torchrun --standalone --nproc_per_node="$NGPU" -m steadydancer batch \
    --manifest "$MANIFEST" --out "$OUT" --ckpt_dir "$CKPT_DIR" --size "$SIZE" \
    --sample_guide_scale 5.0 --condition_guide_scale 1.0 --end_cond_cfg 0.4 \
    "${parallel[@]}" "$@"
