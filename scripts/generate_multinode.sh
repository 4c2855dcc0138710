#!/usr/bin/env bash
# Several nodes (torchrun rendezvous): run this same script on every node.
#
#   NNODES=2 NODE_RANK=<0 on the first node, 1 on the second> MASTER_ADDR=<first node's address> \
#   CKPT_DIR=/path/SteadyDancer-14B INPUT_DIR=/path/prepared scripts/generate_multinode.sh [extra flags]
#
# Every node needs the same CKPT_DIR and INPUT_DIR paths (shared or copied storage); the video is
# written by global rank 0 (on the first node). Keep Ulysses inside a node (its all-to-all is the
# heavy exchange): ULYSSES = GPUs per node, RING = number of nodes (the default), so that only the
# ring's K/V passes cross the network.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${CKPT_DIR:?set CKPT_DIR to the SteadyDancer-14B folder}"
: "${INPUT_DIR:?set INPUT_DIR to a folder written by steadydancer prepare}"
: "${MASTER_ADDR:?set MASTER_ADDR to the address of the first node}"
: "${NODE_RANK:?set NODE_RANK (0 .. NNODES-1)}"
NNODES=${NNODES:-2}
# GPUs listed by nvidia-smi (0 without it; a failing pipeline must not end the script silently under -e)
GPUS_PER_NODE=${GPUS_PER_NODE:-$(nvidia-smi -L 2>/dev/null | grep -c "^GPU" || true)}
if ! [ "$GPUS_PER_NODE" -ge 1 ] 2>/dev/null; then
    echo "error: GPUS_PER_NODE=$GPUS_PER_NODE: expected the number of GPUs to use (>= 1); set GPUS_PER_NODE (nvidia-smi found none)" >&2
    exit 1
fi
MASTER_PORT=${MASTER_PORT:-29500}
ULYSSES=${ULYSSES:-$GPUS_PER_NODE}
RING=${RING:-$NNODES}
SIZE=${SIZE:-1024*576}

exec torchrun --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="$GPUS_PER_NODE" \
    --rdzv_backend=c10d --rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv_id="${RDZV_ID:-steadydancer}" \
    generate_dancer.py \
    --task i2v-14B --size "$SIZE" --ckpt_dir "$CKPT_DIR" --input_dir "$INPUT_DIR" \
    --dit_fsdp --t5_fsdp --ulysses_size "$ULYSSES" --ring_size "$RING" \
    --sample_guide_scale 5.0 --condition_guide_scale 1.0 --end_cond_cfg 0.4 \
    "$@"
