#!/usr/bin/env bash
# What one training process makes of an accelerator on its own, before any sweep is sized: the
# training-throughput study (scripts/throughput.py) on the 32-disc rail, one setting at a time, for
# the looped model and the deep stack at growing batch sizes. The sweep of 2026-12-04 ran twelve
# processes at once and each made 1-3 steps/s (docs/LOG.md); this says what one alone makes, and
# which batch reaches the lowest validation error per minute.
#
#   OUT=/tmp/out bash scripts/device/time_alone.sh          # about 9 minutes with the defaults
#   OUT=/tmp/o ALLOW_CPU=1 MINUTES=0.05 BATCHES=8 EPISODES=8 bash scripts/device/time_alone.sh   # smoke run
#
# Batch 4096 on 32 discs needs tens of GiB (its process is killed on a 24 GiB CPU machine, and the
# study names it as failed and goes on); on this machine BATCHES="256 1024" ran (results/time-alone-cpu).
# Writes OUT/<kind>/summary.md and throughput.jsonl (one row per batch, with its curve and device)
# and OUT/timeline.log.
set -u
OUT=${OUT:?set OUT to the folder for the results}
MINUTES=${MINUTES:-1}               # training wall-clock per setting
BATCHES=${BATCHES:-"256 1024 4096"}
KINDS=${KINDS:-"looped deep"}
N_BODIES=${N_BODIES:-32}
EPISODES=${EPISODES:-300}
EVAL_EVERY=${EVAL_EVERY:-50}        # steps between validations (the CPU-speed estimate validates too often here)
mkdir -p "$OUT"
t0=$(date +%s)
say() { echo "[$(( $(date +%s) - t0 ))s] $*" | tee -a "$OUT/timeline.log"; }
source "$(dirname "$0")/setup.sh"
(command -v nvidia-smi >/dev/null && nvidia-smi -L) | tee -a "$OUT/timeline.log"
status=0
for kind in $KINDS; do
  say "$kind: batches $BATCHES, $MINUTES min each"
  # no two-thread or compiled settings: threads do not matter on the device, and compilation
  # would eat the minute being timed
  python3 scripts/throughput.py --out "/tmp/time-alone/$kind" --env-id loopwm/Rail-v0 --n-bodies "$N_BODIES" \
    --episodes "$EPISODES" --model-kind "$kind" --minutes "$MINUTES" --batches $BATCHES --two-thread-batches \
    --compile-batches --workers 1 --eval-every "$EVAL_EVERY" --report-minutes "$MINUTES" > "$OUT/$kind.log" 2>&1 || { say "$kind failed"; status=1; }
  mkdir -p "$OUT/$kind"
  cp /tmp/time-alone/"$kind"/{summary.md,throughput.jsonl} "$OUT/$kind/" 2>/dev/null
  cat "$OUT/$kind/summary.md" 2>/dev/null
done
say "done"
exit $status
