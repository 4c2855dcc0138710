#!/usr/bin/env bash
# Pose stage for one reference image + driving video: the official preprocessing recipe in one
# command (detect once, align, negative stream, draw), writing the folder generate_dancer.py reads.
#
#   IMAGE=ref.png VIDEO=dance.mp4 OUT=inputs/pair scripts/prepare_pair.sh [extra flags]
#
# Without weights the bundled mediapipe detector runs; for results like the official ones give the
# DWPose files: DWPOSE=dw-ll_ucoco_384.onnx YOLOX=yolox_l.onnx (or the mmpose .pth files).
# The prompt comes from PROMPT, else from prompt.txt beside the video. Extra flags go to
# `steadydancer prepare` (e.g. --align_frame 10 --max_frame 200 --seed 1 --all_people).
set -euo pipefail
cd "$(dirname "$0")/.."

: "${IMAGE:?set IMAGE to the reference image}"
: "${VIDEO:?set VIDEO to the driving video}"
: "${OUT:?set OUT to the input folder to write}"
args=(--image "$IMAGE" --video "$VIDEO" --out "$OUT")
[ -n "${PROMPT:-}" ] && args+=(--prompt "$PROMPT")
[ -n "${DWPOSE:-}" ] && args+=(--dwpose_ckpt "$DWPOSE")
[ -n "${YOLOX:-}" ] && args+=(--yolox_ckpt "$YOLOX")

exec python -m steadydancer prepare "${args[@]}" "$@"
