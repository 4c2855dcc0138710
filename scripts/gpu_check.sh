#!/usr/bin/env bash
# What only a GPU can show, in one go: CUDA parity (float32 and bf16), the CUDA-only tests
# (block swap side stream, FP8 matmuls), a multi-process NCCL run when several GPUs are visible,
# and the 14B benchmark table. Results go to OUT (default outputs/gpu_check) as text and JSON.
#
#   scripts/gpu_check.sh                 # everything (~10 min on one H100)
#   STAGES="parity tests" scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-outputs/gpu_check}
SHARED=${SHARED:-../shared}
STAGES=${STAGES:-"parity tests nccl bench"}
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "error: no CUDA device visible (this script checks the GPU paths)" >&2; exit 2; }
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
status=0

for stage in $STAGES; do
  case $stage in
    parity)
      cases=$(ls -d "$SHARED"/parity/*/ 2>/dev/null)
      [ -n "$cases" ] || { echo "no parity cases under $SHARED/parity" >&2; continue; }
      python -m steadydancer.parity $cases --device cuda 2>&1 | tee "$OUT/parity_fp32.txt" || status=1
      python -m steadydancer.parity $cases --device cuda --dtype bf16 --tolerance 0.05 2>&1 \
          | tee "$OUT/parity_bf16.txt" || status=1
      ;;
    tests)
      python -m pytest -q -rs tests/test_block_swap.py tests/test_fp8.py tests/test_block_swap_dit.py \
          tests/test_sequence_parallel_attention.py 2>&1 | tee "$OUT/tests.txt" || status=1
      ;;
    nccl)
      gpus=$(python -c "import torch; print(torch.cuda.device_count())")
      if [ "$gpus" -ge 2 ]; then
        TINY="$OUT/tiny_ckpt"; IN="$OUT/inputs"
        python scripts/make_tiny_checkpoint.py "$TINY" >/dev/null
        python -m steadydancer.cli.main prepare --image assets/demo/ref_image.png --video assets/demo/driving_video.mp4 \
            --out "$IN" --max_frame 9 >/dev/null 2>&1
        torchrun --nproc_per_node=2 generate_dancer.py --ckpt_dir "$TINY" --input_dir "$IN" \
            --size 832*480 --frame_num 5 --sample_steps 4 --base_seed 3 --ulysses_size 2 --dit_fsdp \
            --save_file "$OUT/nccl_ulysses2.mp4" 2>&1 | tail -3 | tee "$OUT/nccl.txt" || status=1
      else
        echo "nccl: one GPU visible, skipped" | tee "$OUT/nccl.txt"
      fi
      ;;
    bench)
      python scripts/bench.py --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.txt" || status=1
      python scripts/bench.py --modes plain,token_chunk:8192 --frames 161 --json "$OUT/bench_161.json" 2>&1 \
          | tee "$OUT/bench_161.txt" || status=1
      ;;
    *) echo "error: STAGES: unknown stage $stage (parity, tests, nccl, bench)" >&2; exit 2 ;;
  esac
done
echo "results in $OUT"
exit $status
