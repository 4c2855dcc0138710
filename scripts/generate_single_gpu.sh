#!/usr/bin/env bash
# One GPU: the official single-GPU recipe of the SteadyDancer README.
#
#   CKPT_DIR=/path/SteadyDancer-14B INPUT_DIR=/path/prepared scripts/generate_single_gpu.sh [extra flags]
#
# INPUT_DIR is a folder written by `steadydancer prepare` (or the official preprocessing):
# ref_image.png, prompt.txt, positive/, negative/. Extra flags go to generate_dancer.py, e.g.
# --frame_num 49, --sample_steps 30, --t5_cpu, --offload_model False (faster, more GPU memory).
set -euo pipefail
cd "$(dirname "$0")/.."

: "${CKPT_DIR:?set CKPT_DIR to the SteadyDancer-14B folder}"
: "${INPUT_DIR:?set INPUT_DIR to a folder written by steadydancer prepare}"
SIZE=${SIZE:-1024*576}
SEED=${SEED:-106060}
SAVE_FILE=${SAVE_FILE:-"$(basename "$INPUT_DIR")--$(date +%Y%m%d%H%M%S).mp4"}

exec python generate_dancer.py \
    --task i2v-14B --size "$SIZE" --ckpt_dir "$CKPT_DIR" \
    --image "$INPUT_DIR/ref_image.png" --prompt "$(cat "$INPUT_DIR/prompt.txt")" \
    --cond_pos_folder "$INPUT_DIR/positive/" --cond_neg_folder "$INPUT_DIR/negative/" \
    --sample_guide_scale 5.0 --condition_guide_scale 1.0 --end_cond_cfg 0.4 \
    --base_seed "$SEED" --save_file "$SAVE_FILE" \
    "$@"
