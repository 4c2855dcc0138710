#!/usr/bin/env bash
# Build the GPU kit: everything scripts/gpu_check.sh needs on the borrowed H200 machine that the
# repository itself does not carry, in one ignored folder (default .gpu_kit) that travels with a
# device run (`carry: [".gpu_kit"]`). That machine has no network, Python 3.12, torch 2.11,
# transformers 5.x, numpy, safetensors, opencv, onnxruntime, pytest ... but no diffusers, and
# ../shared does not travel with the repository. docs/gpu_check.md says how the kit is used.
#
#   scripts/device_kit.sh                 # wheels (from PyPI) + parity cases -> .gpu_kit
#   scripts/device_kit.sh --no-wheels     # parity cases only (offline; CI checks the size this way)
#   KIT=/tmp/kit SHARED=/path/shared scripts/device_kit.sh
#
# Layout: $KIT/wheels/*.whl, $KIT/speed_wheels/*.whl (only for gpu_check.sh bench_speed),
# $KIT/parity/<case>/ (a copy of $SHARED/parity/<case>), $KIT/MANIFEST.txt.
# Fails (exit 1) when a parity case is missing or when the kit plus the repository's own files
# would exceed what one device run may send (64 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."

KIT=${KIT:-.gpu_kit}
SHARED=${SHARED:-${STEADYDANCER_SHARED:-../shared}}
LIMIT_MIB=${LIMIT_MIB:-64}
# Only what the GPU stages import and that machine lacks (KINDS.md's package list): the checks
# import steadydancer's DiT/VAE/schedulers (diffusers); av, ftfy and gguf are only imported by the
# pose video IO, prompt cleaning and GGUF loading, none of which the GPU stages run. diffusers
# 0.42.1 needs huggingface-hub>=1.32 and safetensors>=0.8 (that machine: 1.33 and 0.8.0) and uses
# the standard library's importlib.metadata on Python 3.12.
WHEELS=(${KIT_WHEELS:-diffusers==0.42.1})
# Optional kernels for the speed rows only (gpu_check.sh puts them on the path of bench_speed alone,
# so that --attention auto elsewhere, e.g. the bench stage's rows, keeps the machine's own kernels).
# sageattention 1.0.6 is SageAttention 1, Triton kernels only (a 20 kB pure-Python wheel; it imports
# with torch 2.11's Triton 3.6); SageAttention 2's CUDA kernels have no wheel on PyPI.
SPEED_WHEELS=(${KIT_SPEED_WHEELS:-sageattention==1.0.6})
# The model cases gpu_check.sh runs on CUDA (the pose case is CPU-only; metrics is not a parity case).
CASES=(${KIT_CASES:-dit dit_dpm t5 clip vae})

with_wheels=1
for arg in "$@"; do
  case $arg in
    --no-wheels) with_wheels=0 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "error: device_kit.sh: unknown argument $arg (expected --no-wheels)" >&2; exit 2 ;;
  esac
done

missing=()
for case in "${CASES[@]}"; do
  [ -d "$SHARED/parity/$case" ] || missing+=("$case")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "error: parity case(s) ${missing[*]} not found under $SHARED/parity (set SHARED to the shared folder)" >&2
  exit 1
fi

rm -rf "$KIT"
mkdir -p "$KIT/parity" "$KIT/wheels" "$KIT/speed_wheels"
for case in "${CASES[@]}"; do
  cp -r "$SHARED/parity/$case" "$KIT/parity/$case"
done
[ -f "$SHARED/parity/README.md" ] && cp "$SHARED/parity/README.md" "$KIT/parity/"

if [ $with_wheels = 1 ]; then
  # The recipe of the device notes: wheels for CPython 3.12 on x86-64 Linux, no dependencies
  # (each one the machine lacks is named in WHEELS).
  python3 -m pip download --quiet --retries 1 --timeout 20 --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform any -d "$KIT/wheels" "${WHEELS[@]}" \
    || { echo "error: could not download ${WHEELS[*]} (no access to PyPI?); --no-wheels builds the rest" >&2; exit 3; }
  if [ ${#SPEED_WHEELS[@]} -gt 0 ]; then
    python3 -m pip download --quiet --retries 1 --timeout 20 --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform any -d "$KIT/speed_wheels" "${SPEED_WHEELS[@]}" \
      || { echo "error: could not download ${SPEED_WHEELS[*]} (no access to PyPI?); --no-wheels builds the rest" >&2; exit 3; }
  fi
fi

# What one device run sends: the repository's tracked and untracked-not-ignored files, plus the kit.
repo_bytes=$( (git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null || true) \
              | awk '{s += $1} END {print s + 0}')
kit_bytes=$(du -sb "$KIT" | cut -f1)
total=$((repo_bytes + kit_bytes))
limit=$((LIMIT_MIB * 1024 * 1024))
{
  echo "steadydancer GPU kit, built $(date -u +%Y-%m-%dT%H:%M:%SZ) from $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "wheels: $(cd "$KIT/wheels" && ls *.whl 2>/dev/null | tr '\n' ' ')"
  echo "speed wheels (bench_speed only): $(cd "$KIT/speed_wheels" && ls *.whl 2>/dev/null | tr '\n' ' ')"
  echo "parity cases: ${CASES[*]}"
  awk -v k="$kit_bytes" -v r="$repo_bytes" -v l="$LIMIT_MIB" \
      'BEGIN {printf "kit %.1f MiB + repository %.1f MiB = %.1f MiB of %d MiB\n", k/1048576, r/1048576, (k+r)/1048576, l}'
} > "$KIT/MANIFEST.txt"
cat "$KIT/MANIFEST.txt"
if [ "$total" -gt "$limit" ]; then
  echo "error: the kit and the repository together are over $LIMIT_MIB MiB: a device run would refuse them" >&2
  exit 1
fi
