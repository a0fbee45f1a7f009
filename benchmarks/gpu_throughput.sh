#!/usr/bin/env bash
# Issue 3 item 8 in one device call: the reference DINO steps (peer_dino_step.py) and our
# DINO / DINO + SP training step (ViT-S/16, 2x224 + 6x96, batch 128, bf16 + torch.compile,
# model only and end to end), on the same card in the same run, with the ratio, and a
# torch.profiler table of 3 end-to-end steps per setting (benchmarks/gpu_study.sh runs this too).
#
# Prepare here (the GPU machine reaches no registry and does not see ../shared):
#   mkdir -p .gpu .whl && cp ../shared/bench/peer_dino_step.py .gpu/
#   pip download --no-deps -d .whl lightly==1.6.0 hydra-core omegaconf   (lightly is not on the GPU image)
# Run:   run(command="bash benchmarks/gpu_throughput.sh", carry=[".whl", ".gpu"], timeout_s=540)
# Expect ~5-7 min (compilation of 4 backbones per setting dominates).
set -euo pipefail
if ! python3 -c "import lightly" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:-}:src
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -c "import torch, timm, lightly; print('torch', torch.__version__, 'timm', timm.__version__, 'lightly', lightly.__version__)"
python3 benchmarks/throughput.py --framework dino --steps ${STEPS:-20} --peer .gpu/peer_dino_step.py \
  --profile ${PROFILE:-3} ${OUT:+--json $OUT/throughput.json}
