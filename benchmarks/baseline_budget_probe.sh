#!/bin/bash
# Has cpu-full's (b) stopped improving at 900 steps? Issue 9 asks for a (b) "trained until
# validation stops improving". This trains (b)'s recipe (resnet10t, balanced sampler,
# best-by-validation, 64 px, real images) at STEPS steps for seeds 0..N-1 in a copy of a run's
# prepared data (the baseline and baseline_seeds stages, nothing else), then pairs the mean
# over seeds with SRC's 900-step (b) (its baseline and baseline_seeds members), choosing on
# validation (benchmarks/seed_study.py).
#   SRC=runs/cpu-full-fm STEPS=1800 DERMAE_THREADS=2 bash benchmarks/baseline_budget_probe.sh
set -euo pipefail
source "$(dirname "$0")/probe_common.sh"
SRC=${SRC:-runs/cpu-full-fm}
STEPS=${STEPS:-1800}
N=${N:-3}
DERMAE=${DERMAE:-.venv/bin/dermae}
PY=$(dirname "$DERMAE")/python
DST=runs/baseline-steps-$STEPS
copy_prepared "$SRC" "$DST"
uptime
"$DERMAE" run -c configs/cpu-full.yaml --run-dir "$DST" --until baseline_seeds \
  --set baseline.loss=balanced_sampler --set data.include_synthetic=false \
  --set "baseline.train.max_steps=$STEPS" --set "distill.baseline_seeds=$((N - 1))"
uptime
folders() { # run dir -> its baseline and first N-1 seed members, comma-separated
  local out="$1/baseline/model"
  for k in $(seq 1 $((N - 1))); do out="$out,$1/baseline_seeds/seed_plus_$k/model"; done
  echo "$out"
}
PYTHONPATH=${PYTHONPATH:-src} "$PY" benchmarks/seed_study.py "$DST" --reference b900 \
  --recipe "b900=$(folders "$SRC")" --recipe "b$STEPS=$(folders "$DST")" \
  --out "benchmarks/results/baseline_budget_${STEPS}_study.json"
