#!/usr/bin/env bash
# The whole generation path offline on a CPU: tiny random checkpoint + a prepared input folder.
#
#   INPUT_DIR=outputs/demo/inputs scripts/generate_tiny_cpu.sh [extra flags]
#
# (`steadydancer demo --out outputs/demo` writes such an INPUT_DIR.) The video is noise.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${INPUT_DIR:?set INPUT_DIR to a folder written by steadydancer prepare}"
TINY=${TINY:-outputs/tiny_ckpt}
[ -f "$TINY/config.json" ] || python scripts/make_tiny_checkpoint.py "$TINY"

exec python generate_dancer.py \
    --task i2v-14B --size 832*480 --ckpt_dir "$TINY" --input_dir "$INPUT_DIR" \
    --frame_num 17 --sample_steps 4 --base_seed 0 --device cpu \
    --save_file "${SAVE_FILE:-outputs/tiny.mp4}" \
    "$@"
