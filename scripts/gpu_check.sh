#!/usr/bin/env bash
# What only a GPU can show, in stages that each fit one 10-minute device call (docs/gpu_check.md):
#
#   scripts/gpu_check.sh parity tests      # call 1: CUDA parity fp32 + bf16, the CUDA-only tests (~3 min)
#   scripts/gpu_check.sh bench             # call 2: the 14B benchmark table, 81 frames (~6 min)
#   scripts/gpu_check.sh bench_long        # optional call 3: 161 frames, plain vs token_chunk:8192
#   scripts/gpu_check.sh bench_cache       # optional: step cache rows (33 frames, 8 steps, ~2.5 min a row)
#   scripts/gpu_check.sh bench_speed       # optional: attention kernels vs SDPA, VAE tiled vs not (~5 min)
#   scripts/gpu_check.sh nccl              # 2+ GPUs only: torchrun Ulysses 2 + FSDP (needs av)
#   scripts/gpu_check.sh --dry-run [STAGE ...]   # print the commands, run nothing (no GPU needed)
#   DEVICE=cpu BENCH_ARGS="--dim 32 ..." scripts/gpu_check.sh parity bench   # a rehearsal on a CPU
#
# Reads the kit that scripts/device_kit.sh built (KIT, default .gpu_kit: wheels the machine lacks
# and a copy of the parity cases) and installs its wheels into /tmp when they are not importable.
# Results go to RESULTS (default: $OUT, the folder a device run sends back, else outputs/gpu_check):
# at most 8 files (device.txt, parity_fp32.txt, parity_bf16.txt, tests.txt, nccl.txt, bench.md,
# bench.jsonl); each bench row is printed and appended to bench.md / bench.jsonl as it finishes, so
# a call that runs out of time keeps every finished row. Exit status: 0 all passed, 1 a check
# failed, 2 the machine or the kit is not usable (no CUDA, missing parity cases, missing wheels).
set -uo pipefail
cd "$(dirname "$0")/.."

KIT=${KIT:-.gpu_kit}
RESULTS=${RESULTS:-${OUT:-outputs/gpu_check}}
PY=${PYTHON:-python3}
SITE=${SITE:-/tmp/steadydancer_site}
SITE_SPEED=${SITE_SPEED:-/tmp/steadydancer_site_speed}   # the kit's speed_wheels: on bench_speed's path only
CASES=(dit dit_dpm t5 clip vae)
BENCH_MODES=${BENCH_MODES:-plain,fp8,fp8_matmul,token_chunk:8192,block_swap:20,block_swap:0,batched,cfg_parallel}
BENCH_REPEATS=${BENCH_REPEATS:-1}
BENCH_ARGS=${BENCH_ARGS:-}               # extra bench.py arguments (a rehearsal's reduced shape)
DEVICE=${DEVICE:-cuda}                    # cpu: rehearse the stages on a machine without a GPU
LONG_MODES=${LONG_MODES:-plain,token_chunk:8192}
CACHE_MODES=${CACHE_MODES:-magcache:0.06,fbcache:0.05,magcache:0.12,fbcache:0.1}
CACHE_FRAMES=${CACHE_FRAMES:-33}
# the 14B forward with each attention kernel forced (a kernel the machine lacks is a one-line row),
# then the VAE decode of 81 frames at 1024*576 untiled and tiled
SPEED_MODES=${SPEED_MODES:-attention:sdpa,attention:sage,attention:flash3,attention:flash2,vae:plain,vae:tiled}
ALL_STAGES="parity tests nccl bench bench_long bench_cache bench_speed"
GPU_TESTS="tests/test_gpu_paths.py tests/test_block_swap.py tests/test_fp8.py tests/test_block_swap_dit.py
           tests/test_sequence_parallel_attention.py"

dry=0
stages=()
for arg in "$@"; do
  case $arg in
    --dry-run) dry=1 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    parity|tests|nccl|bench|bench_long|bench_cache|bench_speed) stages+=("$arg") ;;
    *) echo "error: gpu_check.sh: unknown stage or option '$arg' (stages: $ALL_STAGES; --dry-run)" >&2; exit 2 ;;
  esac
done
[ ${#stages[@]} -gt 0 ] || stages=(parity tests)

# run FILE CMD...: print the command; unless --dry-run, run it with its output shown and saved
# (appended) to RESULTS/FILE. Returns the command's status.
run() {
  local file=$1; shift
  echo "+ $* >> $RESULTS/$file"
  [ $dry = 1 ] && return 0
  "$@" 2>&1 | tee -a "$RESULTS/$file"
  return "${PIPESTATUS[0]}"
}

fail_setup() { echo "error: $*" >&2; exit 2; }

# ---- setup: the kit's wheels and this checkout on the path ----------------------------------
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export STEADYDANCER_SHARED="$KIT"        # the tests look for parity cases there
if [ $dry = 1 ]; then
  echo "# dry run: kit $KIT, results $RESULTS, stages ${stages[*]}"
  echo "+ $PY -m pip install --no-index --no-deps --target $SITE $KIT/wheels/<each wheel whose package is not importable>"
  [[ " ${stages[*]} " == *" bench_speed "* ]] && \
    echo "+ $PY -m pip install --no-index --no-deps --target $SITE_SPEED $KIT/speed_wheels/<each, likewise>"
else
  # the kit first (no GPU needed to find it missing), then the machine
  [ -d "$KIT" ] || fail_setup "no kit at $KIT: build it with scripts/device_kit.sh and send it along (carry: [\"$KIT\"])"
  if [[ " ${stages[*]} " == *" parity "* ]]; then
    for case in "${CASES[@]}"; do
      [ -d "$KIT/parity/$case" ] || fail_setup "parity case $case missing from $KIT/parity (rebuild the kit: scripts/device_kit.sh)"
    done
  fi
  if [ "$DEVICE" = cuda ]; then
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
        || fail_setup "no CUDA device visible (this script checks the GPU paths; DEVICE=cpu rehearses them)"
  fi
  mkdir -p "$RESULTS"
  # install_wheels DIR TARGET: each wheel of DIR whose package is not importable yet, into TARGET
  install_wheels() {
    local wheel package
    for wheel in "$1"/*.whl; do
      [ -e "$wheel" ] || continue
      package=$(basename "$wheel" | cut -d- -f1 | tr 'A-Z-' 'a-z_')
      if ! "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$package') is None)" 2>/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$2" "$wheel" \
            || fail_setup "could not install $wheel"
      fi
    done
  }
  install_wheels "$KIT/wheels" "$SITE"
  if [[ " ${stages[*]} " == *" bench_speed "* ]]; then
    install_wheels "$KIT/speed_wheels" "$SITE_SPEED"
  fi
  "$PY" -c "import diffusers, steadydancer.models.dit, steadydancer.parity" \
      || fail_setup "steadydancer does not import (a package the kit should carry is missing: see above)"
  {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
    "$PY" -c "import torch, diffusers, transformers, sys; print('python', sys.version.split()[0], '| torch', torch.__version__, \
'| cuda', torch.version.cuda, '| capability', torch.cuda.get_device_capability() if torch.cuda.is_available() else None, \
'| diffusers', diffusers.__version__, '| transformers', transformers.__version__)"
    cat "$KIT/MANIFEST.txt" 2>/dev/null
  } | tee -a "$RESULTS/device.txt"
fi

status=0
for stage in "${stages[@]}"; do
  started=$SECONDS
  case $stage in
    parity)
      cases=()
      for case in "${CASES[@]}"; do cases+=("$KIT/parity/$case"); done
      run parity_fp32.txt "$PY" -m steadydancer.parity "${cases[@]}" --device "$DEVICE" || status=1
      run parity_bf16.txt "$PY" -m steadydancer.parity "${cases[@]}" --device "$DEVICE" --dtype bf16 --tolerance 0.05 || status=1
      ;;
    tests)
      # shellcheck disable=SC2086
      run tests.txt "$PY" -m pytest -q -rs -p no:cacheprovider $GPU_TESTS || status=1
      ;;
    nccl)
      gpus=$([ $dry = 1 ] && echo 2 || "$PY" -c "import torch; print(torch.cuda.device_count())")
      if [ "$gpus" -ge 2 ]; then
        tiny=/tmp/steadydancer_tiny; inputs=/tmp/steadydancer_inputs
        run nccl.txt "$PY" scripts/make_tiny_checkpoint.py "$tiny" || status=1
        run nccl.txt "$PY" -m steadydancer.cli.main prepare --image assets/demo/ref_image.png \
            --video assets/demo/driving_video.mp4 --out "$inputs" --max_frame 9 || status=1
        run nccl.txt torchrun --standalone --nproc_per_node=2 generate_dancer.py --ckpt_dir "$tiny" \
            --input_dir "$inputs" --size '832*480' --frame_num 5 --sample_steps 4 --base_seed 3 \
            --ulysses_size 2 --dit_fsdp --t5_fsdp --save_file /tmp/steadydancer_nccl.mp4 || status=1
        # CFG parallelism over NCCL against one process: the PSNR of the two videos (>= 40 dB expected)
        tiny_args=(--ckpt_dir "$tiny" --input_dir "$inputs" --size '832*480' --frame_num 5 --sample_steps 5 --base_seed 3)
        run nccl.txt "$PY" generate_dancer.py "${tiny_args[@]}" --save_file /tmp/steadydancer_one.mp4 || status=1
        run nccl.txt torchrun --standalone --nproc_per_node=2 generate_dancer.py "${tiny_args[@]}" --cfg_parallel \
            --save_file /tmp/steadydancer_cfg.mp4 || status=1
        run nccl.txt "$PY" -c "import sys, numpy as np; from steadydancer.pose.video import read_video as r
a, b = (np.stack(r(p)[0]).astype(float) for p in sys.argv[1:]); m = ((a - b) ** 2).mean()
print('cfg_parallel vs one process: PSNR', 'inf' if m == 0 else round(10 * np.log10(255 ** 2 / m), 2), 'dB')
sys.exit(0 if m == 0 or 10 * np.log10(255 ** 2 / m) >= 40 else 1)" /tmp/steadydancer_cfg.mp4 /tmp/steadydancer_one.mp4 || status=1
      else
        echo "nccl: one GPU visible, skipped" | tee -a "$RESULTS/nccl.txt"
      fi
      ;;
    bench)
      # shellcheck disable=SC2086
      run bench.md "$PY" scripts/bench.py --device "$DEVICE" --modes "$BENCH_MODES" --repeats "$BENCH_REPEATS" \
          --jsonl "$RESULTS/bench.jsonl" $BENCH_ARGS || status=1
      ;;
    bench_long)
      # shellcheck disable=SC2086
      run bench.md "$PY" scripts/bench.py --device "$DEVICE" --frames 161 --modes "$LONG_MODES" \
          --repeats "$BENCH_REPEATS" --jsonl "$RESULTS/bench.jsonl" $BENCH_ARGS || status=1
      ;;
    bench_cache)
      # each row: one uncached and one cached DC-CFG run of BENCH_CACHE_STEPS (8) steps, random weights
      # shellcheck disable=SC2086
      run bench.md "$PY" scripts/bench.py --device "$DEVICE" --frames "$CACHE_FRAMES" --modes "$CACHE_MODES" \
          --repeats 1 --jsonl "$RESULTS/bench.jsonl" $BENCH_ARGS || status=1
      ;;
    bench_speed)
      # attention rows: build, warm-up, BENCH_REPEATS timed forwards (+1 SDPA forward for the error);
      # vae:tiled decodes twice (tiled, then untiled for the difference). The speed wheels
      # (SageAttention) are importable here and nowhere else.
      # shellcheck disable=SC2086
      run bench.md env PYTHONPATH="$SITE_SPEED:$PYTHONPATH" "$PY" scripts/bench.py --device "$DEVICE" \
          --modes "$SPEED_MODES" --repeats "$BENCH_REPEATS" \
          --jsonl "$RESULTS/bench.jsonl" $BENCH_ARGS || status=1
      ;;
  esac
  [ $dry = 1 ] || echo "stage $stage: $((SECONDS - started)) s" | tee -a "$RESULTS/device.txt"
done
[ $dry = 1 ] && echo "# result files (at most 8): device.txt parity_fp32.txt parity_bf16.txt tests.txt nccl.txt bench.md bench.jsonl"
[ $dry = 1 ] || echo "results in $RESULTS (status $status)"
exit $status
