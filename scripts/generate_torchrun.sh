#!/usr/bin/env bash
# One node, N GPUs: FSDP-sharded DiT and T5 + Ulysses sequence parallelism (the official recipe).
#
#   CKPT_DIR=/path/SteadyDancer-14B INPUT_DIR=/path/prepared NGPU=8 scripts/generate_torchrun.sh [extra flags]
#
# ULYSSES x RING must equal NGPU; ULYSSES must divide the DiT's 40 heads (1, 2, 4, 5, 8, 10, ...),
# so for 3, 6 or 16 GPUs put the remainder in RING (e.g. NGPU=16 ULYSSES=8 RING=2).
# Extra flags go to generate_dancer.py (e.g. --frame_num 49 --base_seed 42 --save_file out.mp4).
set -euo pipefail
cd "$(dirname "$0")/.."

: "${CKPT_DIR:?set CKPT_DIR to the SteadyDancer-14B folder}"
: "${INPUT_DIR:?set INPUT_DIR to a folder written by steadydancer prepare}"
# GPUs listed by nvidia-smi (0 without it; a failing pipeline must not end the script silently under -e)
NGPU=${NGPU:-$(nvidia-smi -L 2>/dev/null | grep -c "^GPU" || true)}
if ! [ "$NGPU" -ge 1 ] 2>/dev/null; then
    echo "error: NGPU=$NGPU: expected the number of GPUs to use (>= 1); set NGPU (nvidia-smi found none)" >&2
    exit 1
fi
ULYSSES=${ULYSSES:-$NGPU}
RING=${RING:-1}
SIZE=${SIZE:-1024*576}

if [ "$NGPU" -eq 1 ]; then
    # FSDP and sequence parallelism need several processes; one GPU runs the plain command
    echo "generate_torchrun.sh: one GPU: running the single-GPU generation (no FSDP, no sequence parallelism)" >&2
    exec python generate_dancer.py \
        --task i2v-14B --size "$SIZE" --ckpt_dir "$CKPT_DIR" --input_dir "$INPUT_DIR" \
        --sample_guide_scale 5.0 --condition_guide_scale 1.0 --end_cond_cfg 0.4 \
        "$@"
fi

exec torchrun --standalone --nproc_per_node="$NGPU" generate_dancer.py \
    --task i2v-14B --size "$SIZE" --ckpt_dir "$CKPT_DIR" --input_dir "$INPUT_DIR" \
    --dit_fsdp --t5_fsdp --ulysses_size "$ULYSSES" --ring_size "$RING" \
    --sample_guide_scale 5.0 --condition_guide_scale 1.0 --end_cond_cfg 0.4 \
    "$@"
