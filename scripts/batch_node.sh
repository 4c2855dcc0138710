#!/usr/bin/env bash
# One node, N GPUs: every pair of a manifest, the models loaded once per GPU.
#
#   CKPT_DIR=/path/SteadyDancer-14B MANIFEST=pairs.csv OUT=results NGPU=8 scripts/batch_node.sh [extra flags]
#
# Runs in the folder it is started from: relative CKPT_DIR, MANIFEST and OUT are read there. It calls
# the installed `steadydancer` command (or, when that is not on PATH, `python -m steadydancer`, so the
# package must be importable). GROUP (default 1) GPUs make each video together (Ulysses sequence
# parallelism, FSDP-sharded DiT and T5 when GROUP > 1); NGPU / GROUP videos are made at a time. GROUP
# must divide NGPU and the DiT's 40 heads (1, 2, 4, 5, 8). Extra flags go to steadydancer batch (e.g.
# --frame_num 49 --base_seed 42 --target_fps 16). Any number of these may run on one OUT at once (other
# nodes, a resubmission): they share the rows through per-row claims. Run it again after an
# interruption: finished rows are skipped. TORCHRUN (default torchrun) and PYTHON (default python)
# name the launchers. Written for bash 4.2 and later (no arrays: an empty one stops bash < 4.4 under set -u).
set -euo pipefail

: "${CKPT_DIR:?set CKPT_DIR to the SteadyDancer-14B folder}"
: "${MANIFEST:?set MANIFEST to a manifest (steadydancer manifest --images DIR --videos DIR --out pairs.csv)}"
: "${OUT:?set OUT to the output folder}"
NGPU=${NGPU:-$(nvidia-smi -L 2>/dev/null | grep -c "^GPU" || true)}
if ! [ "$NGPU" -ge 1 ] 2>/dev/null; then
    echo "error: NGPU=$NGPU: expected the number of GPUs to use (>= 1); set NGPU (nvidia-smi found none)" >&2
    exit 1
fi
GROUP=${GROUP:-1}
if ! [ "$GROUP" -ge 1 ] 2>/dev/null || [ $((NGPU % GROUP)) -ne 0 ]; then
    echo "error: GROUP=$GROUP: expected a number of GPUs per video that divides NGPU=$NGPU" >&2
    exit 1
fi
SIZE=${SIZE:-1024*576}
TORCHRUN=${TORCHRUN:-torchrun}
PYTHON=${PYTHON:-python}

# the caller's flags last (they win); the group's flags before them
if [ "$GROUP" -gt 1 ]; then
    set -- --ulysses_size "$GROUP" --dit_fsdp --t5_fsdp "$@"
fi
set -- batch --manifest "$MANIFEST" --out "$OUT" --ckpt_dir "$CKPT_DIR" --size "$SIZE" \
    --sample_guide_scale 5.0 --condition_guide_scale 1.0 --end_cond_cfg 0.4 "$@"

if command -v steadydancer >/dev/null 2>&1; then
    exec "$TORCHRUN" --standalone --nproc_per_node="$NGPU" --no-python steadydancer "$@"
fi
if ! "$PYTHON" -c "import steadydancer" 2>/dev/null; then
    echo "error: neither the steadydancer command nor the steadydancer package ($PYTHON -c 'import steadydancer') found; pip install it, or activate its environment" >&2
    exit 1
fi
exec "$TORCHRUN" --standalone --nproc_per_node="$NGPU" -m steadydancer "$@"
