#!/usr/bin/env bash
# Loom's GPU figures in one call, about 8 minutes on one H100 or H200:
#   1. bench/learn.py: every preset, tiny, through all its paper stages on a GPU-sized shapes world
#      (target: held-out accuracy >= 0.90 for every preset);
#   2. bench/train_throughput.py: LLaVA-1.5's layout at 1B (frozen ViT-L/336 + MLP + a 1.1B Llama), Loom
#      packed vs padded vs transformers' LlavaForConditionalGeneration on the same batches
#      (targets: packed >= 2.5x padded useful tokens/s, MFU >= 45%);
#   then one summary table, also written to OUT/summary.md.
#
#   bench/gpu.sh [OUT]                    OUT defaults to runs/gpu
#   bench/gpu.sh --tiny [OUT]             or LOOM_GPU_TINY=1: the same at a tiny shape, on a CPU in minutes
#                                         (a check that every step runs; its figures mean nothing)
#
# The GPU machines have torch and transformers, but neither Ray, polars nor pydantic. bench/learn.py never
# starts Ray (render and pack with ray: never) and nothing on its path imports polars; pydantic (the config
# schema) travels as wheels: run bench/gpu_wheels.sh here once, name .whl in the device call's carry, and
# this script installs them into /tmp/site when the machine lacks pydantic.
# LEARN_ARGS and THROUGHPUT_ARGS add to (and override) each bench's arguments.
set -euo pipefail
cd "$(dirname "$0")/.."

tiny=${LOOM_GPU_TINY:-0}
if [ "${1:-}" = "--tiny" ]; then tiny=1; shift; fi
out=${1:-runs/gpu}
mkdir -p "$out"
export NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1 TQDM_DISABLE=1  # a log, not progress bars
python=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}

if ! "$python" -c "import pydantic" 2>/dev/null; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "gpu.sh: pydantic is missing and .whl/ holds no wheels; run bench/gpu_wheels.sh, carry .whl" >&2
    exit 2
  fi
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
"$python" -c "import torch, transformers; print('gpu.sh: torch', torch.__version__, 'transformers', transformers.__version__,
      '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU: cpu')"

if [ "$tiny" = 1 ]; then
  learn=(--train-scenes 24 --val-scenes 6 --epochs 1 --llm-epochs 1 --llm-scenes 40 --eval-limit 12)
  throughput=(--shape tiny --steps 2 --warmup 1)
  learn_limit=1800 throughput_limit=600
else
  # a GPU-sized world: more than twice the CPU bench's scenes, and sequences batched as a GPU wants them
  learn=(--train-scenes 2000 --val-scenes 300 --epochs 4 --llm-epochs 3 --llm-scenes 4000 --batch-size 8
         --llm-batch-size 32)
  throughput=(--steps 20 --warmup 3)
  learn_limit=340 throughput_limit=130
fi

started=$(date +%s)
# each bench under its own limit: learn writes its table after every preset, so a stopped run still reports
timeout "$learn_limit" "$python" bench/learn.py --out "$out/learn" --json "$out/learn.json" "${learn[@]}" \
  ${LEARN_ARGS:-} || echo "gpu.sh: bench/learn.py stopped (exit $?)"
learn_s=$(( $(date +%s) - started ))
timeout "$throughput_limit" "$python" bench/train_throughput.py --json "$out/throughput.json" "${throughput[@]}" \
  ${THROUGHPUT_ARGS:-} || echo "gpu.sh: bench/train_throughput.py stopped (exit $?)"
total_s=$(( $(date +%s) - started ))

"$python" bench/gpu_summary.py "$out/learn.json" "$out/throughput.json" "$learn_s" "$total_s" | tee "$out/summary.md"
