#!/usr/bin/env bash
# The first GPU hour's figures in one device call, sized for a 15-minute session (issue 18):
# ~3 min machine start + this script (LIMIT s, default 540: under the 600 s call limit, with
# room for the transfers) + the give-back. In order, each step only if it fits in what is left:
#   1. step speed (benchmarks/throughput.py, <= TP_LIMIT s): a quick bf16 no-compile figure
#      first (~1 min), then DINO and DINO + SP with torch.compile (model only and end to end,
#      ViT-S/16, 2x224 + 6x96, batch 128), then the peer (peer_dino_step.py: bf16, bf16 +
#      compile) under its own timeout; every figure lands in $OUT/throughput.json as it comes.
#   1b. benchmarks/cut_speed.py --device cuda (seconds).
#   2. study cells (benchmarks/study.py --budget gpu): only cells whose whole expected time
#      fits in what is left (no partial cell); PartsWorld is rendered only for a cell that starts.
#   3. packing: on any exit (also when killed), what exists goes to $OUT (<= 8 files).
#
# Prepare here, in the root of the checkout the device call sends (.gpu/ and .whl/ are ignored):
#   mkdir -p .gpu .whl && cp ../shared/bench/peer_dino_step.py .gpu/ && git rev-parse HEAD > .gpu/commit.txt
#   python3 -m pip download --no-deps -d .whl lightly==1.6.0     # lightly is not on the GPU image
# Run:
#   run(command="bash benchmarks/gpu_session.sh", carry=[".whl", ".gpu"], timeout_s=600)
# What comes back ($OUT, the reply's files_at):
#   session.log      everything printed, with the plan and the time each step took
#   throughput.json  the figures (rows, peer, notes, profiles; "complete": false if cut short)
#   throughput.txt   throughput.py's output: result lines as they came, the table, the profiles
#   study.tar.gz     results/study/ (cells' small files, summary.md, calls.jsonl) and runs/study_partial/
#                    (slim checkpoints {config, backbone, step} of the CNN/ViT-Tiny cells, finished or not)
#   summary.md       the study's tables
#   cut_speed.txt    benchmarks/cut_speed.py on the card: the multi-crop's cut now vs before issue 18
# Unpack from the repository root: tar xzf <files_at>/study.tar.gz
#
# Dry run on the CPU (tests/test_gpu_session.py): bash benchmarks/gpu_session.sh --dry-run
#   the same steps at tiny sizes (throughput --small, peer timeout 20 s, the study's real
#   fit decision against the gpu budget's cell times), the same packing.
# Knobs: LIMIT, TP_LIMIT (360; 0: study cells only), PEER_S (150), PACK_S (25: kept for packing), WORKERS (4),
#   BUDGET (gpu), STUDY_ARGS, PEER (.gpu/peer_dino_step.py), PY (python3), RUNS (runs: scratch), OUT.
set -uo pipefail
T0=$(date +%s)
DRY=0; [ "${1:-}" = "--dry-run" ] && DRY=1
LIMIT=${LIMIT:-$([ $DRY = 1 ] && echo 150 || echo 540)}
TP_LIMIT=${TP_LIMIT:-$([ $DRY = 1 ] && echo 90 || echo 360)}
PEER_S=${PEER_S:-$([ $DRY = 1 ] && echo 20 || echo 150)}
PACK_S=${PACK_S:-25}; WORKERS=${WORKERS:-4}; BUDGET=${BUDGET:-gpu}; STUDY_ARGS=${STUDY_ARGS:-}
PEER=${PEER:-.gpu/peer_dino_step.py}; PY=${PY:-python3}
RUNS=${RUNS:-runs}; OUT=${OUT:-$RUNS/gpu_session_out}; mkdir -p "$OUT" "$RUNS"
RES=$RUNS/session_results; STUDY_RUNS=$RUNS/study
left() { echo $(( LIMIT - ($(date +%s) - T0) )); }
stamp() { echo "gpu_session: [$(( $(date +%s) - T0 )) s] $*"; }
exec > >(tee -a "$OUT/session.log") 2>&1

pack() {  # whatever exists, into $OUT: small files and slim checkpoints in one archive
  trap - EXIT TERM INT
  stamp "packing"
  mkdir -p "$RES"
  rm -rf "$RUNS/study_partial"; local parts=()
  for d in "$STUDY_RUNS"/*/; do
    c=$(basename "$d")
    # ViT-S/16 backbones (~86 MB) would pass the 16 MB per file that comes back: left out
    [[ $c != *vits16* ]] || continue
    # the run folder's small files and a slim checkpoint; nothing when it has no checkpoint
    timeout 20 "$PY" -c "import sys; from spatialssl.runfolder import slim_copy; sys.exit(not slim_copy(*sys.argv[1:]))" \
      "$d" "$RUNS/study_partial/$c" && parts+=("study_partial/$c")
  done
  tar czf "$OUT/study.tar.gz" --transform 's,^session_results,results/study,' \
    --transform 's,^study_partial,runs/study_partial,' -C "$RUNS" session_results "${parts[@]}"
  cp "$RES/summary.md" "$OUT/" 2>/dev/null || true
  ls -la "$OUT"
  stamp "done (limit $LIMIT s)"
  sleep 1  # let tee flush session.log into $OUT
}
trap pack EXIT
trap 'stamp "stopped by a signal"; exit 143' TERM INT

if ! "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('lightly') is None)"; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}src SPATIALSSL_CACHE=${SPATIALSSL_CACHE:-$RUNS/cache} PYTHONUNBUFFERED=1
[ -f .gpu/commit.txt ] && export SPATIALSSL_COMMIT="$(cat .gpu/commit.txt) (from .gpu/commit.txt)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
stamp "plan: $LIMIT s in all; 1. throughput <= $TP_LIMIT s (peer <= $PEER_S s, last); 2. study ($BUDGET) cells that fit whole in the rest less $PACK_S s; 3. pack"

# 1. step speed
TP=$(( $(left) - PACK_S )); [ "$TP" -gt "$TP_LIMIT" ] && TP=$TP_LIMIT
if [ $DRY = 1 ]; then
  TP_ARGS=(--small --steps 1 --warmup 1 --batch 4 --threads 1 --quick-steps 0)
else
  TP_ARGS=(--steps 20 --profile 3)
fi
[ -f "$PEER" ] && TP_ARGS+=(--peer "$PEER" --peer-timeout "$PEER_S") || stamp "no peer script at $PEER: peer skipped"
if [ "$TP" -gt 0 ]; then
  stamp "1. throughput, $TP s"
  timeout -k 10 "$TP" "$PY" benchmarks/throughput.py --framework dino --time-limit "$TP" "${TP_ARGS[@]}" \
    --json "$OUT/throughput.json" 2>&1 | tee "$OUT/throughput.txt"
  stamp "throughput exit ${PIPESTATUS[0]}"
else
  stamp "1. throughput skipped (TP_LIMIT=0)"
fi

# 1b. the multi-crop's cut alone, now vs before issue 18 (a few seconds on a GPU)
if [ "$(( $(left) - PACK_S ))" -gt 60 ]; then
  stamp "1b. cut_speed"
  timeout -k 5 60 "$PY" benchmarks/cut_speed.py --device "$([ $DRY = 1 ] && echo cpu || echo cuda)" \
    --batch "$([ $DRY = 1 ] && echo 2 || echo 128)" --repeats "$([ $DRY = 1 ] && echo 1 || echo 5)" 2>&1 | tee "$OUT/cut_speed.txt"
fi

# 2. study cells that fit whole (the committed results/study/ seeds the results: finished
#    cells are skipped, and their measured times size the rest)
mkdir -p "$RES"
[ -d results/study ] && cp -rn results/study/. "$RES/"
LEFT=$(( $(left) - PACK_S ))
stamp "2. study, $LEFT s"
if [ "$LEFT" -gt 60 ]; then
  timeout -k 10 "$LEFT" "$PY" benchmarks/study.py --budget "$BUDGET" --results "$RES" --runs "$STUDY_RUNS" \
    --time-limit "$LEFT" --workers "$WORKERS" $STUDY_ARGS
  stamp "study exit $?"
elif [ "$LEFT" -gt 15 ]; then  # no cell can fit: the tables of what the results hold
  timeout -k 5 "$LEFT" "$PY" benchmarks/study.py --budget "$BUDGET" --results "$RES" --runs "$STUDY_RUNS" \
    --report-only $STUDY_ARGS
  stamp "study tables exit $?"
else
  stamp "no time left for the study"
fi
