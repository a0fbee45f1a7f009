#!/usr/bin/env bash
# Issue 13 in one device call: the GPU step speed first (benchmarks/throughput.py beside
# peer_dino_step.py, ~3-6 min), then study cells (benchmarks/study.py --budget gpu) until the
# time limit, then the tables; everything to commit comes back in $OUT (docs/study.md).
#
# Prepare here, in the root of the checkout the device call sends (.gpu/ and .whl/ are ignored):
#   mkdir -p .gpu .whl && cp ../shared/bench/peer_dino_step.py .gpu/ && git rev-parse HEAD > .gpu/commit.txt
#   python3 -m pip download --no-deps -d .whl lightly==1.6.0     # lightly is not on the GPU image
# Run:
#   run(command="bash benchmarks/gpu_study.sh", carry=[".whl", ".gpu"], timeout_s=600)
# Unpack what comes back (files_at = the reply's folder), from the repository root:
#   tar xzf <files_at>/study.tar.gz        # -> results/study/ (cells, summary.md, report/, calls.jsonl)
#   tar xzf <files_at>/release.tar.gz      # -> runs/study_release/ (DINO pair checkpoints, if finished)
#   throughput.txt / throughput.json: the step-speed table and profiles, for benchmarks/RESULTS.md
#
# Run again on the same warm machine (within its 30 s warm time): the throughput is skipped
# (a marker in runs/), finished cells are skipped, partial ones resume from runs/study/.
# Knobs: LIMIT (s, default 570: the whole script), TP_LIMIT (s, default 330), WORKERS (4),
# THROUGHPUT (1; 0 skips it), BUDGET (gpu), STUDY_ARGS (more study.py arguments), ALLOW_PARTIAL (1: use the last minutes to advance a cell to a
# checkpoint that a next call on this machine resumes; 0: start only cells that can finish).
set -uo pipefail
T0=$(date +%s)
LIMIT=${LIMIT:-570}; TP_LIMIT=${TP_LIMIT:-330}; WORKERS=${WORKERS:-4}
BUDGET=${BUDGET:-gpu}; STUDY_ARGS=${STUDY_ARGS:-}  # CPU smoke: BUDGET=tiny STUDY_ARGS="--frameworks simclr ..."
OUT=${OUT:-runs/gpu_study_out}; mkdir -p "$OUT" runs
exec > >(tee -a "$OUT/gpu_study.log") 2>&1
if ! python3 -c "import lightly" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:-}:src SPATIALSSL_CACHE=${SPATIALSSL_CACHE:-runs/cache} PYTHONUNBUFFERED=1
[ -f .gpu/commit.txt ] && export SPATIALSSL_COMMIT="$(cat .gpu/commit.txt) (from .gpu/commit.txt)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -c "import torch, timm, lightly; print('torch', torch.__version__, 'timm', timm.__version__, 'lightly', lightly.__version__)"

# 1. step speed: ViT-S/16, 2x224 + 6x96, batch 128, bf16 + torch.compile, model only and end to
#    end from uint8 canvases, DINO with and without SP, the peer first on the same card
if [ "${THROUGHPUT:-1}" = 1 ] && [ ! -f runs/gpu_study.throughput.done ]; then
  timeout "$TP_LIMIT" python3 benchmarks/throughput.py --framework dino --steps 20 --peer .gpu/peer_dino_step.py \
    --profile 3 --json "$OUT/throughput.json" 2>&1 | tee "$OUT/throughput.txt"
  [ "${PIPESTATUS[0]}" = 0 ] && touch runs/gpu_study.throughput.done
fi

# 2. study cells until the time limit (the committed results/study/ seeds the results folder,
#    so cells finished in earlier sessions are skipped)
mkdir -p runs/study_results
[ -d results/study ] && cp -rn results/study/. runs/study_results/
LEFT=$(( LIMIT - ($(date +%s) - T0) - 30 ))  # 30 s kept for packing
echo "gpu_study: $LEFT s for the study"
if [ "$LEFT" -gt 60 ]; then
  python3 benchmarks/study.py --budget "$BUDGET" --results runs/study_results --runs runs/study --time-limit "$LEFT" \
    --workers "$WORKERS" $([ "${ALLOW_PARTIAL:-1}" = 1 ] && echo --allow-partial) $STUDY_ARGS
else
  python3 benchmarks/study.py --budget "$BUDGET" --results runs/study_results --runs runs/study --report-only $STUDY_ARGS
fi

# 3. pack (at most 8 files come back from $OUT, no more than 2 folders down: one archive)
tar czf "$OUT/study.tar.gz" --transform 's,^study_results,results/study,' -C runs study_results
cp runs/study_results/summary.md "$OUT/" 2>/dev/null || true
# the DINO seed-0 CNN pair, slimmed as checkpoints/README.md says ({config, backbone, step})
rm -rf runs/study_release; rel=()
for c in dino-cnn-s0 dino_sp-cnn-s0; do
  if [ -f runs/study/$c/backbone.safetensors ]; then
    mkdir -p runs/study_release/$c && cp runs/study/$c/{config.yaml,metrics.jsonl,train.log} runs/study_release/$c/
    python3 -c "import sys, torch; s = torch.load(sys.argv[1], map_location='cpu', weights_only=False); \
torch.save({k: s[k] for k in ('config', 'backbone', 'step')}, sys.argv[2])" \
      runs/study/$c/checkpoint.pt runs/study_release/$c/checkpoint.pt && rel+=(study_release/$c)
  fi
done
[ ${#rel[@]} -gt 0 ] && tar czf "$OUT/release.tar.gz" --transform 's,^study_release/,runs/study_release/,' -C runs "${rel[@]}"
ls -la "$OUT"
echo "gpu_study: done in $(( $(date +%s) - T0 )) s"
sleep 1  # let tee flush gpu_study.log into $OUT
