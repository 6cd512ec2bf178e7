#!/bin/bash
# Can a bigger CNN at the student's 64 px make a teacher far above (b)? Ensembles of up to nine
# 64-px resnet10t models stop at +0.02 (BENCHMARKS section 32). Each MODEL in MODELS is trained
# with (b)'s recipe (balanced sampler, 900 steps of 64, best-by-validation, real images; only
# the architecture changes) as the baseline of its own copy of SRC's prepared data, then scored
# alone and in ensembles with SRC's three (b) seeds (teacher_ensemble_probe.py, no training).
#   SRC=runs/cpu-full-fm MODELS="resnet26t resnet34d" DERMAE_THREADS=2 \
#     bash benchmarks/teacher_class_probe.sh
set -euo pipefail
source "$(dirname "$0")/probe_common.sh"
SRC=${SRC:-runs/cpu-full-fm}
MODELS=${MODELS:-resnet26t resnet34d}
DERMAE=${DERMAE:-.venv/bin/dermae}
PY=$(dirname "$DERMAE")/python
seed_members "$SRC"
for MODEL in $MODELS; do
  DST=runs/teacher-class-$MODEL
  copy_prepared "$SRC" "$DST"
  uptime
  "$DERMAE" run -c configs/cpu-full.yaml --run-dir "$DST" --until baseline \
    --set "baseline.model=$MODEL" --set baseline.loss=balanced_sampler \
    --set data.include_synthetic=false
  uptime
  add_member "$MODEL" "$DST/baseline/model"
done
score_members "$SRC" benchmarks/results/teacher_class_probe.json
