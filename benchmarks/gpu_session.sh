#!/usr/bin/env bash
# The GPU figures in one device call (issues 18, 29), sized for a 15-minute session: ~3 min
# machine start, then this script within --limit S (the call's timeout_s; default 600, a
# call's most), then the give-back. One absolute deadline (epoch s) is set here and every
# child is given its share of it, counted from when it starts (not from after its imports):
#   1. step speed (benchmarks/throughput.py --deadline): our eager bf16 figure (~1 min), the
#      peer's bf16 then bf16 + compile step (peer_dino_step.py, output streamed to
#      $OUT/peer.txt), then ours compiled: a like-for-like ratio exists whatever is cut.
#      Every figure lands in $OUT/throughput.json as it comes.
#   1b. benchmarks/cut_speed.py --device cuda (seconds), in what throughput left.
#   2. study cells (benchmarks/study.py --budget gpu): only when the smallest pending cell's
#      whole expected time fits in what is left (study.py --list); else skipped, and said.
#   3. packing, on any exit (also on SIGTERM): this call's study results into one archive;
#      then a check of $OUT against what a device call returns.
#
# Prepare here, in the root of the checkout the device call sends (.gpu/ and .whl/ are ignored):
#   mkdir -p .gpu .whl && cp ../shared/bench/peer_dino_step.py .gpu/ && git rev-parse HEAD > .gpu/commit.txt
#   python3 -m pip download --no-deps -d .whl lightly==1.6.0     # lightly is not on the GPU image
# Run (S = the call's timeout_s; with less device time left than a whole call, the smaller):
#   run(command="bash benchmarks/gpu_session.sh --limit S", carry=[".whl", ".gpu"], timeout_s=S)
# What comes back ($OUT, the reply's files_at), at most 6 files (the device returns 8), each
# <= 15 MiB, flat:
#   session.log      versions first (python, torch, torchvision, timm, lightly, CUDA, GPU), the
#                    plan, everything printed, the time each step took, what $OUT holds
#   throughput.json  the figures (rows with their mode, peer, notes, profiles; "complete":
#                    false and "stopped" when cut short)
#   throughput.txt   throughput.py's output: result lines as they came, the table, the profiles
#   peer.txt         the peer's own output, as it ran
#   cut_speed.txt    benchmarks/cut_speed.py on the card: the multi-crop's cut now vs before issue 18
#   study.tar.gz     only when the study ran: this call's results (cells' small files,
#                    summary.md, calls.jsonl) as results/study/ and runs/study_partial/ (slim
#                    checkpoints {config, backbone, step} of the run folders this call wrote)
# Unpack from the repository root: tar xzf <files_at>/study.tar.gz
#
# Dry run on the CPU (tests/test_gpu_session.py): bash benchmarks/gpu_session.sh --dry-run
#   the same steps at tiny sizes: the quick eager phase, the peer, the compile path (aot_eager,
#   bf16 like the GPU), the profiler, cut_speed, the study's real fit decision, the packing.
# Knobs (environment): TP_LIMIT (0: no throughput; else a cap in s), PEER_S (180: the peer's
#   cap), CUT_S (30: kept for cut_speed), PACK_S (25: kept for packing), STUDY_MARGIN (60: the
#   gpu budget's reserve before its time limit), WORKERS (4), BUDGET (gpu), STUDY_ARGS,
#   PEER (.gpu/peer_dino_step.py), PY (python3), RUNS (runs: scratch), OUT, LIMIT (= --limit).
set -uo pipefail
T0=$(date +%s)
DRY=0; LIMIT=${LIMIT:-600}
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --limit) LIMIT=${2:?"--limit needs seconds"}; shift ;;
    --limit=*) LIMIT=${1#--limit=} ;;
    *) echo "gpu_session.sh: unknown argument '$1' (known: --dry-run, --limit S)" >&2; exit 2 ;;
  esac
  shift
done
[[ $LIMIT =~ ^[0-9]+$ ]] || { echo "gpu_session.sh: --limit takes whole seconds, not '$LIMIT'" >&2; exit 2; }
TP_LIMIT=${TP_LIMIT:-$LIMIT}
PEER_S=${PEER_S:-$([ $DRY = 1 ] && echo 30 || echo 180)}
CUT_S=${CUT_S:-$([ $DRY = 1 ] && echo 20 || echo 30)}
PACK_S=${PACK_S:-25}; STUDY_MARGIN=${STUDY_MARGIN:-60}
WORKERS=${WORKERS:-4}; BUDGET=${BUDGET:-gpu}; STUDY_ARGS=${STUDY_ARGS:-}
PEER=${PEER:-.gpu/peer_dino_step.py}; PY=${PY:-python3}
RUNS=${RUNS:-runs}; OUT=${OUT:-$RUNS/gpu_session_out}
RES=$RUNS/session_results; STUDY_RUNS=$RUNS/study; MARK=$RUNS/.session_start
MAX_BYTES=$(( 15 * 1024 * 1024 ))  # per file; the device returns 16 MiB, kept a MiB clear
OUT_FILES=(session.log throughput.json throughput.txt peer.txt cut_speed.txt study.tar.gz)
# the call's end: packing done by END (a few seconds before the limit, for the shell's exit);
# the steps share what comes before END - PACK_S
END=$(( T0 + LIMIT - 5 )); WORK_END=$(( END - PACK_S ))
mkdir -p "$OUT" "$RUNS"
# only this call's files: no leftovers of an earlier call in $OUT or in the study's results
for f in "${OUT_FILES[@]}"; do rm -f "$OUT/$f" "$OUT/$f.tmp"; done
rm -rf "$RES" "$RUNS/study_partial" "$RUNS/study.tar.gz"
touch "$MARK"  # run folders written after this are this call's
left() { echo $(( WORK_END - $(date +%s) )); }
stamp() { echo "gpu_session: [$(( $(date +%s) - T0 )) s] $*"; }
# the copies into $OUT ignore SIGTERM: a call's timeout may signal the whole process group, and
# the lines written while this script stops and packs must still reach the files (tee ends at EOF)
logto() { trap '' TERM INT; exec tee "$@"; }
trap '' PIPE  # a write to a closed pipe fails; it does not end the script before it packs
exec 3>&1 4>&2  # the terminal, for the last lines, once session.log is closed
exec > >(logto "$OUT/session.log") 2>&1
TEE=$!

CHILD=
run_child() {  # "$@" in the background, waited for: a SIGTERM reaches this shell's trap at once
  "$@" &
  CHILD=$!
  wait "$CHILD"; local rc=$?
  CHILD=
  return $rc
}
stop_child() {  # SIGTERM to the running step (timeout passes it on), then SIGKILL after $1 s
  [ -n "$CHILD" ] || return 0
  kill -TERM "$CHILD" 2>/dev/null
  for _ in $(seq $(( $1 * 5 ))); do kill -0 "$CHILD" 2>/dev/null || return 0; sleep 0.2; done
  kill -KILL "$CHILD" 2>/dev/null
}

check_out() {  # $OUT against what a device call returns: 8 files, 16 MiB each, 2 folders deep, [A-Za-z0-9._-]
  local n=0 bad=() rel
  while IFS= read -r -d '' f; do
    rel=${f#"$OUT"/}; n=$(( n + 1 ))
    [ -f "$f" ] || bad+=("$rel: not a plain file")
    [[ $rel =~ ^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+){0,2}$ ]] || bad+=("$rel: name or depth")
    [ -f "$f" ] && [ "$(stat -c %s "$f")" -gt $MAX_BYTES ] && bad+=("$rel: $(stat -c %s "$f") bytes")
    echo "returns: $rel $(stat -c %s "$f") bytes"
  done < <(find "$OUT" -mindepth 1 -not -type d -print0 | sort -z)
  [ $n -le 8 ] || bad+=("$n files (at most 8 come back)")
  [ ${#bad[@]} -eq 0 ] && echo "returns: $n files, within the device's limits" \
    || printf 'returns: OVER THE LIMITS: %s\n' "${bad[@]}"
}

pack() {  # this call's study results and slim checkpoints in one archive; then $OUT checked
  local rc=$?
  trap - EXIT; trap '' TERM INT  # the packing finishes (each part is bounded)
  stop_child 10
  stamp "packing"
  rm -f "$OUT"/*.tmp  # a JSON rewrite cut by a kill: the file it was replacing is whole
  local dirs=() parts=()
  if [ -d "$STUDY_RUNS" ]; then
    while IFS= read -r d; do
      # ViT-S/16 backbones (~86 MB) would pass what one returned file may hold: left out
      [[ $d != *vits16* ]] && [ -n "$(find "$d" -maxdepth 1 -type f -newer "$MARK" -print -quit)" ] && dirs+=("$d")
    done < <(find "$STUDY_RUNS" -mindepth 1 -maxdepth 2 -type d | sort)
  fi
  if [ ${#dirs[@]} -gt 0 ]; then
    # one process for every folder (one torch import): a folder without a readable checkpoint gives nothing
    while IFS= read -r p; do [ -n "$p" ] && parts+=("study_partial/$p"); done < <(timeout 30 "$PY" - \
        "$STUDY_RUNS" "$RUNS/study_partial" "${dirs[@]}" <<'EOF'
import sys
from pathlib import Path
from spatialssl.runfolder import slim_copy
root, dest = Path(sys.argv[1]), Path(sys.argv[2])
for d in map(Path, sys.argv[3:]):
    rel = d.relative_to(root)
    print(rel if slim_copy(d, dest / rel) else "", flush=True)
EOF
    )
  fi
  local what=()
  [ -d "$RES" ] && [ -n "$(ls -A "$RES")" ] && what+=(session_results)
  if [ ${#what[@]} -eq 0 ] && [ ${#parts[@]} -eq 0 ]; then
    stamp "nothing of the study to pack (no cell ran in this call)"
  else
    local tarball=$RUNS/study.tar.gz
    for try in with-checkpoints small-files; do
      [ $try = small-files ] && parts=()
      tar czf "$tarball" --transform 's,^session_results,results/study,' \
        --transform 's,^study_partial,runs/study_partial,' -C "$RUNS" "${what[@]}" "${parts[@]}"
      [ "$(stat -c %s "$tarball")" -le $MAX_BYTES ] && break
      stamp "study.tar.gz ($try) is $(stat -c %s "$tarball") bytes, over $MAX_BYTES: $([ $try = with-checkpoints ] \
        && echo 'again without the slim checkpoints' || echo 'not packed')"
      rm -f "$tarball"
    done
    # written beside, then renamed: a kill mid-copy leaves no half archive under its name
    [ -f "$tarball" ] && cp "$tarball" "$OUT/study.tar.gz.tmp" && mv "$OUT/study.tar.gz.tmp" "$OUT/study.tar.gz"
  fi
  stamp "done (limit $LIMIT s, exit $rc)"
  # close session.log: tee ends once every writer is gone; then $OUT is checked, also into the log
  exec 1>&3 2>&4
  for _ in $(seq 50); do kill -0 "$TEE" 2>/dev/null || break; sleep 0.1; done
  check_out | tee -a "$OUT/session.log"
  exit $rc
}
trap pack EXIT
trap 'stamp "stopped by a signal"; exit 143' TERM INT

if ! "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('lightly') is None)"; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}src SPATIALSSL_CACHE=${SPATIALSSL_CACHE:-$RUNS/cache} PYTHONUNBUFFERED=1
[ -f .gpu/commit.txt ] && export SPATIALSSL_COMMIT="$(cat .gpu/commit.txt) (from .gpu/commit.txt)"
# what every figure below was made with (the GPU image's versions, not our pins)
timeout 60 "$PY" - <<'EOF' || echo "versions: could not be read (python exit $?)"
import platform
from importlib import metadata
def version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"
import torch
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
print(f"versions: python {platform.python_version()}, torch {torch.__version__}, torchvision {version('torchvision')}, "
      f"timm {version('timm')}, lightly {version('lightly')}, CUDA {torch.version.cuda or 'none'}, GPU {gpu}")
EOF
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
[ -f "$PEER" ] || stamp "no peer script at $PEER: peer skipped"
stamp "plan: $LIMIT s in all, packing done by $(( END - T0 )) s; 1. throughput until $(( WORK_END - CUT_S - T0 )) s" \
  "(eager, peer <= $PEER_S s, compiled); 1b. cut_speed; 2. study ($BUDGET) only if a whole cell fits; 3. pack"

# 1. step speed, to an absolute deadline (throughput.py stops itself a few seconds before it)
TP_END=$(( WORK_END - CUT_S )); [ $(( TP_END - T0 )) -gt "$TP_LIMIT" ] && TP_END=$(( T0 + TP_LIMIT ))
if [ $DRY = 1 ]; then
  # the GPU call's paths at tiny sizes: eager then compiled (aot_eager: no C++ toolchain needed), bf16, profiler
  TP_ARGS=(--small --steps 1 --warmup 1 --batch 4 --threads 1 --quick-steps 1 --compile --compile-backend aot_eager
           --precision bf16 --profile 1)
else
  TP_ARGS=(--steps 20 --profile 3)
fi
[ -f "$PEER" ] && TP_ARGS+=(--peer "$PEER" --peer-timeout "$PEER_S" --peer-log "$OUT/peer.txt")
if [ "$TP_LIMIT" -gt 0 ] && [ $(( TP_END - $(date +%s) )) -gt 20 ]; then
  stamp "1. throughput, until $(( TP_END - T0 )) s"
  # the backstop: killed 5 s after its deadline if it has not stopped itself
  run_child timeout -k 5 $(( TP_END - $(date +%s) + 5 )) "$PY" benchmarks/throughput.py --framework dino \
    --deadline "$TP_END" "${TP_ARGS[@]}" --json "$OUT/throughput.json" > >(logto "$OUT/throughput.txt") 2>&1
  stamp "throughput exit $? (3: stopped at its deadline; 124/137: killed)"
else
  stamp "1. throughput skipped ($([ "$TP_LIMIT" -gt 0 ] && echo "$(( TP_END - $(date +%s) )) s left" || echo TP_LIMIT=0))"
fi

# 1b. the multi-crop's cut alone, now vs before issue 18 (a few seconds on a GPU)
CUT=$(( $(left) < 60 ? $(left) : 60 ))
if [ "$CUT" -gt 15 ]; then
  stamp "1b. cut_speed, <= $CUT s"
  run_child timeout -k 5 "$CUT" "$PY" benchmarks/cut_speed.py --device "$([ $DRY = 1 ] && echo cpu || echo cuda)" \
    --batch "$([ $DRY = 1 ] && echo 2 || echo 128)" --repeats "$([ $DRY = 1 ] && echo 1 || echo 5)" \
    > >(logto "$OUT/cut_speed.txt") 2>&1
  stamp "cut_speed exit $?"
else
  stamp "1b. cut_speed skipped: $(left) s left"
fi

# 2. study cells, only when one whole cell fits; the results folder starts empty (this call's only)
STUDY=(benchmarks/study.py --budget "$BUDGET" --results "$RES" --runs "$STUDY_RUNS" $STUDY_ARGS)
if [ "$(left)" -lt 30 ]; then
  stamp "2. study skipped: $(left) s left, too little to list its cells"
else
  t=$(date +%s)
  LIST=$(timeout 30 "$PY" "${STUDY[@]}" --list 2>&1); lrc=$?
  START_S=$(( $(date +%s) - t + 1 ))  # its start-up (imports): spent again by the run, before its clock starts
  # the smallest expected time of a cell not done yet (lines: index, name, status, expected "450s")
  NEED=$(awk '$3 != "done" && $3 != "failed" && $NF ~ /^[0-9.]+s$/ {sub(/s$/, "", $NF); print int($NF + 0.999)}' \
    <<< "$LIST" | sort -n | head -1)
  if [ $lrc -ne 0 ] || [ -z "$NEED" ]; then
    stamp "2. study skipped: no pending cell listed (study.py --list exit $lrc): $(tail -n 3 <<< "$LIST")"
  elif [ $(( NEED + STUDY_MARGIN + START_S )) -gt "$(left)" ]; then
    stamp "2. study skipped: the smallest cell needs $(( NEED + STUDY_MARGIN + START_S )) s" \
      "($NEED s expected + $STUDY_MARGIN s the study keeps + $START_S s start-up), $(left) s left"
  else
    TL=$(( $(left) - START_S ))
    stamp "2. study, --time-limit $TL s (smallest cell $NEED s)"
    run_child timeout -k 10 $(( $(left) + 5 )) "$PY" "${STUDY[@]}" --time-limit "$TL" --workers "$WORKERS"
    stamp "study exit $?"
  fi
fi
