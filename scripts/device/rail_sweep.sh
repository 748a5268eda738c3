#!/usr/bin/env bash
# Many small world models trained side by side on one accelerator, then scored there: one
# depth_study process per (seed, model), each in its own folder, all reading one rail dataset.
# Measured 2026-12-04 on one H200 (docs/LOG.md): twelve processes at once share the GPU by time
# slicing, not side by side: each made only 1-3 steps/s at batch 256 (the loop 0.9) while the GPU
# read 99% busy. PARALLEL caps the processes at once; measure one alone before sizing a sweep.
#
#   OUT=/tmp/out MINUTES=5 bash scripts/device/rail_sweep.sh
#
# Writes OUT/sweep.tgz.part-* (the study folders with each run's last checkpoint; join with
# `cat sweep.tgz.part-* | tar xz`), OUT/gpu.log (utilisation samples) and OUT/timeline.log.
# Settings come from the environment (defaults below); SEEDS pairs with MODELS_<seed>.
set -u
OUT=${OUT:?set OUT to the folder for the results}
MINUTES=${MINUTES:-5}                 # training wall-clock budget per model
SCORE_SECONDS=${SCORE_SECONDS:-150}   # scoring stops after this (results are written per world size)
N_BODIES=${N_BODIES:-32}
EPISODES=${EPISODES:-1500}
TEST_EPISODES=${TEST_EPISODES:-100}   # the sizes only scored: scoring reads 60 of them
BATCH=${BATCH:-256}
MU_REC=${MU_REC:-6}
SEEDS=${SEEDS:-"0 1"}
PARALLEL=${PARALLEL:-4}               # trainers at once (more share the GPU by time slicing)
# the narrow local loops (looped-d24: 28k parameters, looped-d32: 48k) are the ones the depth study
# compares (README, "Where depth can pay"); every stack in both seeds, so each loop has its match
MODELS_0=${MODELS_0:-"looped-d24 looped-d32 looped deep-1 deep-2 deep-4 deep-8 looped-full deep-4-full"}
MODELS_1=${MODELS_1:-"looped-d24 looped-d32 deep-1 deep-2 deep-4 deep-8"}
TEST_SIZES=${TEST_SIZES:-"16 32 64"}
TEST_DEPTHS=${TEST_DEPTHS:-"1 2 4 8 16 32"}
ROOT=${ROOT:-/tmp/sweep}
DATA=${DATA:-/tmp/data-rail}
t0=$(date +%s)
say() { echo "[$(( $(date +%s) - t0 ))s] $*" | tee -a "$OUT/timeline.log"; }
source "$(dirname "$0")/setup.sh"
(command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 > "$OUT/gpu.log" 2>&1) &
sampler=$!

common=(--data-root "$DATA" --env-id loopwm/Rail-v0 --n-bodies "$N_BODIES" --episodes "$EPISODES" --test-episodes "$TEST_EPISODES" --rail-radius 0.005
        --batch-size "$BATCH" --mu-rec "$MU_REC" --test-depths $TEST_DEPTHS --workers 1)
# the training world first (every trainer reads it), the other sizes while they train
say "collecting $N_BODIES discs"
python3 scripts/depth_study.py --out "$ROOT/collect-$N_BODIES" "${common[@]}" --test-sizes "$N_BODIES" --models deep-1 --stages \
  > "$OUT/collect.log" 2>&1 || { say "collection failed"; tail -30 "$OUT/collect.log"; exit 4; }
md5sum "$DATA"/rail"$N_BODIES"-*/shard_00000.npz | tee -a "$OUT/timeline.log"  # the same data as elsewhere?
(command -v nvidia-smi >/dev/null && nvidia-smi -L) | tee -a "$OUT/timeline.log"
python3 scripts/depth_study.py --out "$ROOT/collect-others" "${common[@]}" --test-sizes $TEST_SIZES --models deep-1 --stages \
  > "$OUT/collect-others.log" 2>&1 &
others=$!
say "training: $MINUTES min per model, $PARALLEL at once"
trainers=(); mine=()
running() { local n=0 p; for p in "${trainers[@]}"; do kill -0 "$p" 2>/dev/null && n=$((n + 1)); done; echo "$n"; }
for s in $SEEDS; do
  var=MODELS_$s
  for m in ${!var}; do
    while [ "$(running)" -ge "$PARALLEL" ]; do sleep 2; done
    python3 scripts/depth_study.py --out "$ROOT/s$s-$m" "${common[@]}" --test-sizes "$N_BODIES" --models "$m" --seed "$s" \
      --steps 1000000 --minutes "$MINUTES" --eval-every 250 --stages train > "$ROOT/s$s-$m.train.log" 2>&1 &
    trainers+=($!)
    mine+=("s$s-$m")
  done
done
for p in "${trainers[@]}"; do wait "$p" || say "a trainer failed (pid $p)"; done
wait "$others" || say "collecting the other sizes failed"
say "scoring for at most $SCORE_SECONDS s"
scorers=()
for s in $SEEDS; do
  var=MODELS_$s
  for m in ${!var}; do
    timeout "$SCORE_SECONDS" python3 scripts/depth_study.py --out "$ROOT/s$s-$m" "${common[@]}" --test-sizes $TEST_SIZES \
      --models "$m" --seed "$s" --steps 1000000 --minutes "$MINUTES" --eval-every 250 --stages score summary \
      > "$ROOT/s$s-$m.score.log" 2>&1 &
    scorers+=($!)
  done
done
for p in "${scorers[@]}"; do wait "$p" || say "a scorer stopped early (pid $p)"; done
kill "$sampler" 2>/dev/null
say "packing"
# each run's last checkpoint only (the one scoring read); the studies, logs and metrics whole
# this call's studies only: what comes back is capped (64 MiB on the device tool)
(cd "$ROOT" && { for d in "${mine[@]}"; do find "$d" "$d".*.log -type f -not -path '*/checkpoints/*'; done
                 for c in $(printf '%s/runs/*/checkpoints ' "${mine[@]}"); do ls "$c"/step_*.json | sort | tail -1 | sed 's/\.json$//' \
                   | while read -r k; do echo "$k.json"; echo "$k.safetensors"; done; done; } > /tmp/sweep-files.txt
 tar czf - -T /tmp/sweep-files.txt) | split -b 15m - "$OUT/sweep.tgz.part-"
ls -la "$OUT"
say "done"
